"""Scale: cold, warm and incremental linear runs on drawn folders of N images, big photos, 12 MP decoding.

    python benchmarks/bench_scale.py [--sizes 1000,5000,20000] [--big 200] [--skip-photos] [--data-root DIR]

For each N in `--sizes` (default 1000, a few minutes here), a folder of N drawn images in 4 classes: varied
sizes (JPEG and PNG, 120-900 px) of which `--big` (200) are 4000x3000 JPEGs with sensor-like grain (about
2 MB each, like phone photos). Then, each as a fresh `tlearn train --mode linear` process:

* cold: no embedding of these images cached (the backbone prepared on this machine beforehand, as after any
  earlier run: its weights converted and its ONNX graph exported and checked; `prepare_s` is that one-time
  step);
* warm: the same folder again, nothing changed;
* incremental: 1% new files added.

Each gives wall time, images/s, the peak RSS of the process (`os.wait4`'s ru_maxrss: the largest process of
the tree) and of the whole tree (sampled every 0.2 s: the command plus its decoding workers), the cache size
on disk and the run's embedding figures. Then the 48-photo test (a cold run on 48 photos of 4000x3000 against
the same 48 at 400x300; issue 13's goal: at most 1.1x) and 12 MP JPEG preprocessing speed with draft decoding
against a full decode (goal: at least 4x). Results: benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import save

CLASSES = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}
BIG = (4000, 3000)


def draw_folder(root: Path, count: int, *, big: int, seed: int, start: int = 0) -> None:
    """`count` images in 4 classes under root/<class>/; the first `big` are 4000x3000 grainy JPEGs."""
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 7, (BIG[1], BIG[0], 1)).astype(np.int16)  # shared, shifted per image
    names = list(CLASSES)
    for n in range(start, start + count):
        label = names[n % len(names)]
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        if n - start < big:
            picture = _photo(rng, CLASSES[label], grain)
            picture.save(folder / f"photo_{n:06d}.jpg", quality=90)
        else:
            size = (int(rng.integers(120, 900)), int(rng.integers(120, 900)))
            picture = _drawing(rng, CLASSES[label], size)
            suffix = ".png" if n % 5 == 0 else ".jpg"
            picture.save(folder / f"img_{n:06d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))


def _drawing(rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    """A noisy background with a block of the class colour somewhere: cheap, varied, learnable."""
    width, height = size
    pixels = rng.integers(60, 196, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    picture = np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR)).copy()
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    picture[top : top + height // 2, left : left + width // 2] = colour
    return Image.fromarray(picture)


def _photo(rng: np.random.Generator, colour: tuple[int, int, int], grain: np.ndarray) -> Image.Image:
    base = np.asarray(_drawing(rng, colour, (BIG[0] // 10, BIG[1] // 10)).resize(BIG, Image.BICUBIC), dtype=np.int16)
    shift = int(rng.integers(0, BIG[0]))
    noisy = base + np.roll(grain, shift, axis=1)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def timed_run(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run `python -m tlearn ARGS` as a fresh process: wall seconds, peak RSS (process, and whole tree)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "tlearn", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    tree_peak = [0]
    done = threading.Event()
    sampler = threading.Thread(target=_sample_tree, args=(process.pid, tree_peak, done), daemon=True)
    sampler.start()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"tlearn {' '.join(args)} failed ({process.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "peak_tree_rss_mb": round(tree_peak[0] / 2**20, 1),
    }


def _sample_tree(root_pid: int, peak: list[int], done: threading.Event) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    while not done.is_set():
        parents: dict[int, int] = {}
        resident: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
                resident[int(entry)] = int(fields[21]) * page
            except (OSError, IndexError, ValueError):
                continue
        tree, grew = {root_pid}, True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        peak[0] = max(peak[0], sum(resident.get(pid, 0) for pid in tree))
        done.wait(0.2)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure_size(work: Path, count: int, big: int, cache: Path, data_root: Path | None) -> dict[str, object]:
    data = (data_root or work) / f"data-{count}-big{min(big, count)}"
    drawn_marker = data / ".drawn"  # a folder kept in --data-root is drawn once and reused
    started = time.perf_counter()
    if not drawn_marker.exists():
        shutil.rmtree(data, ignore_errors=True)
        draw_folder(data, count, big=min(big, count), seed=count)
        drawn_marker.touch()
    drawn_s = time.perf_counter() - started
    env = {"TLEARN_CACHE_DIR": str(cache)}
    figures: dict[str, object] = {"images": count, "big_photos": min(big, count), "draw_s": round(drawn_s, 1)}
    figures["data_mb"] = round(folder_bytes(data) / 1e6, 1)
    for phase in ("cold", "warm", "incremental"):
        if phase == "incremental":
            added = max(1, count // 100)
            draw_folder(data, added, big=0, seed=count + 1, start=count)
            figures["incremental_new_files"] = added
        out = work / f"run-{count}-{phase}"
        result = timed_run(
            ["train", str(data), "--out", str(out), "--mode", "linear", "--backbone", "lite0", "-q"], env
        )
        embedding = json.loads((out / "run.json").read_text()).get("embedding", {})
        images = count + (figures.get("incremental_new_files", 0) if phase == "incremental" else 0)
        result["images_per_s"] = round(images / result["wall_s"], 1)
        result["cache_mb"] = round(folder_bytes(cache) / 1e6, 1)
        result["embedding"] = embedding
        figures[phase] = result
        print(f"N={count} {phase}: {result}", flush=True)
    figures["cold_s_per_image_ms"] = round(1000 * figures["cold"]["wall_s"] / count, 2)
    if data_root is None:
        shutil.rmtree(data)
    else:  # back to the drawn folder: the incremental phase's files go
        for added in data.rglob("img_*"):
            if int(added.stem.split("_")[1]) >= count:
                added.unlink()
    return figures


def prepare_backbone(work: Path, cache: Path) -> float:
    """Build the backbone and export + check its ONNX graph once (what any first run on a machine does)."""
    data = work / "prepare"
    draw_folder(data, 40, big=0, seed=1)  # 10 per class: every class has training images under any split
    env = {"TLEARN_CACHE_DIR": str(cache), "TLEARN_EMBEDDING_ENGINE": "onnx"}
    seconds = timed_run(
        ["train", str(data), "--out", str(work / "prepare-run"), "--mode", "linear", "--backbone", "lite0", "-q"], env
    )
    shutil.rmtree(cache / "embeddings")
    (cache / "files.sqlite").unlink()
    return seconds["wall_s"]


def photo_test(work: Path, prepared: Path) -> dict[str, object]:
    """Cold linear runs on 48 photos of 4000x3000 and on the same 48 scaled to 400x300."""
    big, small = work / "photos-big", work / "photos-small"
    draw_folder(big, 48, big=48, seed=48)
    for path in big.rglob("*.jpg"):
        target = small / path.relative_to(big)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as picture:
            picture.resize((400, 300), Image.BICUBIC).save(target, quality=90)
    results = {}
    for name, data in (("big_4000x3000", big), ("small_400x300", small)):
        cache = work / f"cache-{name}"
        shutil.copytree(prepared, cache)
        env = {"TLEARN_CACHE_DIR": str(cache)}
        results[name] = timed_run(
            ["train", str(data), "--out", str(work / f"run-{name}"), "--mode", "linear", "--backbone", "lite0", "-q"],
            env,
        )
    results["ratio"] = round(results["big_4000x3000"]["wall_s"] / results["small_400x300"]["wall_s"], 3)
    return results


def decode_speed(work: Path) -> dict[str, object]:
    """12 MP JPEG to Lite0's 224x224 input: draft decoding (as tlearn does) against a full decode."""
    from tlearn.backbones.registry import EMBEDDED
    from tlearn.data.images import load_rgb
    from tlearn.data.preprocess import EvalPreprocess

    folder = work / "decode"
    draw_folder(folder, 8, big=8, seed=12)
    files = [path.read_bytes() for path in sorted(folder.rglob("*.jpg"))]
    prep = EvalPreprocess(EMBEDDED["tf_efficientnet_lite0"].preprocessing)

    def per_image(function) -> float:
        rounds = []
        for _ in range(3):
            started = time.perf_counter()
            for data in files:
                function(data)
            rounds.append((time.perf_counter() - started) / len(files))
        return float(np.median(rounds))

    draft = per_image(prep.from_file)
    full = per_image(lambda data: prep.from_picture(load_rgb(data)))
    drafted = load_rgb(files[0], draft_size=prep.draft_size).size
    return {
        "file_mb": round(sum(map(len, files)) / len(files) / 1e6, 2),
        "draft_ms": round(1000 * draft, 1),
        "full_ms": round(1000 * full, 1),
        "speedup": round(full / draft, 2),
        "drafted_size": list(drafted),
    }


def draft_accuracy(prepared: Path, work: Path) -> dict[str, object]:
    """Linear accuracy with the embeddings of four JPEG decodings: full size, draft down to twice the resize
    target (decoder version 1), to the target itself, and to 1.15x it (version 2, shipped).

    On the shared data sets' own protocol (train → test, C by cross-validation) and, less noisy, as the mean
    difference from full decoding over 20 stratified 50/50 resplits of all their images (fixed C, paired);
    plus hymenoptera with every image upscaled to a 12 MP JPEG with grain, where 1/8 DCT scaling applies.
    """
    import warnings

    from sklearn.linear_model import LogisticRegressionCV

    from _common import SHARED
    from tlearn.backbones.onnx_models import GraphFiles, OnnxBackbone
    from tlearn.backbones.registry import StoredBackbone, resolve_backbone
    from tlearn.data.preprocess import EvalPreprocess

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # its 1.10/1.11 default changes
    ref = resolve_backbone("lite0")
    info = StoredBackbone(prepared, ref.key).info()
    backbone = OnnxBackbone.load(GraphFiles.of(prepared, ref.key, info), info)
    target = max(info.preprocessing.scale_size)
    drafts = {"full": None, "draft_2x_target": 2 * target, "draft_1x_target": target}
    drafts["shipped"] = EvalPreprocess(info.preprocessing).draft_size
    preps = {name: EvalPreprocess(info.preprocessing) for name in drafts}
    for name, draft in drafts.items():
        preps[name].draft_size = draft
    splits = {"mri": ("train", "test"), "hymenoptera": ("train", "val"), "pools": ("train", "test")}
    results: dict[str, object] = {}
    for dataset, (train, test) in [*splits.items(), ("hymenoptera_12mp", ("train", "val"))]:
        root = SHARED / dataset.removesuffix("_12mp")
        files = sorted(p for split in (train, test) for p in (root / split).rglob("*") if p.is_file())
        sources = (
            [_as_12mp(path, work / f"12mp-{n}.jpg") for n, path in enumerate(files)] if "_12mp" in dataset else files
        )
        labels = np.array([path.parent.name for path in files])
        is_test = np.array([path.parent.parent.name == test for path in files])
        embedded = {name: _embed_all(backbone, sources, prep) for name, prep in preps.items()}
        results[dataset] = {}
        for name, features in embedded.items():
            head = LogisticRegressionCV(Cs=8, cv=5, max_iter=3000).fit(features[~is_test], labels[~is_test])
            change = np.abs(features - embedded["full"]).max(1) / np.abs(embedded["full"]).max(1)
            results[dataset][name] = {
                "protocol_test_accuracy": round(float(head.score(features[is_test], labels[is_test])), 4),
                "images_changed": int((change > 1e-6).sum()),
                "median_relative_change_of_changed": round(float(np.median(change[change > 1e-6])), 4)
                if (change > 1e-6).any()
                else 0.0,
                "resplit_accuracy_minus_full": _paired_resplits(features, embedded["full"], labels),
            }
            print(f"draft accuracy {dataset} {name}: {results[dataset][name]}", flush=True)
    return results


def _as_12mp(path: Path, target: Path) -> Path:
    """The picture upscaled to 4000x3000 (or 3000x4000) with sensor-like grain, as a quality-90 JPEG."""
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    size = BIG if picture.width >= picture.height else BIG[::-1]
    pixels = np.asarray(picture.resize(size, Image.BICUBIC), dtype=np.int16)
    grain = np.random.default_rng(len(path.name)).normal(0, 5, (size[1], size[0], 1)).astype(np.int16)
    Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8)).save(target, quality=90)
    return target


def _paired_resplits(features: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> list[float]:
    """[mean, standard error] of accuracy(features) - accuracy(reference) over 20 stratified 50/50 resplits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    differences = []
    for fit, score in StratifiedShuffleSplit(n_splits=20, test_size=0.5, random_state=0).split(features, labels):
        accuracy = [
            LogisticRegression(C=0.1, max_iter=3000).fit(x[fit], labels[fit]).score(x[score], labels[score])
            for x in (features, reference)
        ]
        differences.append(accuracy[0] - accuracy[1])
    return [round(float(np.mean(differences)), 4), round(float(np.std(differences, ddof=1) / np.sqrt(20)), 4)]


def _embed_all(backbone, sources: list[Path], prep) -> np.ndarray:
    rows = []
    for start in range(0, len(sources), 32):
        rows.append(backbone.embed(np.stack([prep.from_file(source) for source in sources[start : start + 32]])))
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000", help="folder sizes, e.g. 1000,5000,20000 (empty: none)")
    parser.add_argument("--big", type=int, default=200, help="4000x3000 JPEGs among each folder's images")
    parser.add_argument("--skip-photos", action="store_true", help="skip the 48-photo test and decode speed")
    parser.add_argument(
        "--draft-accuracy", action="store_true", help="also: linear accuracy on the shared data sets per JPEG decoding"
    )
    parser.add_argument("--name", default="scale", help="results file: benchmarks/results/NAME.json")
    parser.add_argument(
        "--data-root", type=Path, help="keep the drawn folders here and reuse them (drawing 100k images takes 20 min)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-scale-"))
    prepared = work / "prepared-cache"
    try:
        prepare_s = prepare_backbone(work, prepared)
        sizes = {}
        for count in (int(value) for value in args.sizes.split(",") if value):
            cache = work / f"cache-{count}"
            shutil.copytree(prepared, cache)
            sizes[str(count)] = measure_size(work, count, args.big, cache, args.data_root)
        photos = None if args.skip_photos else photo_test(work, prepared)
        decoding = None if args.skip_photos else decode_speed(work)
        accuracy = draft_accuracy(prepared, work) if args.draft_accuracy else None
        save(
            args.name,
            {
                "command": "tlearn train DATA --out RUN --mode linear --backbone lite0 (fresh processes)",
                "prepare_s": prepare_s,
                "sizes": sizes,
                "photos_48": photos,
                "decode_12mp": decoding,
                "draft_accuracy": accuracy,
                "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
