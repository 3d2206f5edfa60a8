"""`tlearn audit` against known problems: flipped labels, altered copies, images from another data set.

    python benchmarks/bench_audit.py [--seeds 3] [--skip-duplicates]

Protocol, on signs/train and hymenoptera/train (the shared data sets are never modified: every measurement
works on a temporary copy under /tmp, deleted at the end):

* label errors: the labels of a known random 5% and 10% of the images are flipped to another class (the file
  is copied into that class's folder); the audit runs with its defaults (Lite0); its flagged set is compared
  with the flips at the default threshold (confident learning's own count) and as the top k of its ranking,
  k = the number of flips. The audit of the unflipped copy says what it flags on the data as published.
* time: the audit of an already-embedded folder, in process (`tlearn.audit`) and as a fresh `tlearn audit`.
* outliers: 5 images that belong nowhere (one from each other shared set, a grey and a noise image) added to
  the first class.
* near-duplicates (`--skip-duplicates` to skip): 40 images of each set altered five ways; the similarity of
  each copy to its original and the share found at the default threshold, against the most similar pair of
  distinct images of the set (the numbers behind `DUPLICATE_SIMILARITY`).

Timings: 2 CPU cores; the load average at the end is saved beside them (above 1: something else was running).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

import tlearn
from _common import SHARED, require_shared, run_tlearn, save
from tlearn.audits.duplicates import DUPLICATE_SIMILARITY
from tlearn.audits.vectors import standardised_unit
from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import resolve_backbone
from tlearn.data.discovery import discover
from tlearn.util.progress import Progress

SETS = {"signs": SHARED / "signs" / "train", "hymenoptera": SHARED / "hymenoptera" / "train"}
NOISE = (0.05, 0.10)
ALTERED = 40  # images per set altered for the near-duplicate measurement
PLANTED_OUTLIERS = 5


def flipped_copy(source: Path, target: Path, noise: float, seed: int) -> dict[str, str]:
    """Copy `source` (DATA/<class>/*) to `target` with the labels of round(noise x N) random images flipped.

    Returns:
        {relpath in target: true class} of the flipped images.
    """
    images = discover(source).images
    classes = sorted({image.label for image in images})
    rng = np.random.default_rng(seed)
    flipped = set(rng.choice(len(images), round(noise * len(images)), replace=False).tolist())
    truth = {}
    for position, image in enumerate(images):
        label = (
            str(rng.choice([name for name in classes if name != image.label])) if position in flipped else image.label
        )
        relpath = f"{label}/{image.label}__{image.path.name}"  # unique names; the audit never reads them
        (target / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.path, target / relpath)
        if position in flipped:
            truth[relpath] = image.label
    return truth


def flag_scores(found, truth: dict[str, str]) -> dict[str, float | int | None]:
    """Precision and recall of the flagged set, and precision of the top k of the ranking, against the flips."""
    issues = found.payload["label_issues"]
    flagged = {issue["path"] for issue in issues}
    hits = flagged & set(truth)
    top_k = set(found.findings.ranked_paths()[: len(truth)])
    right = sum(issue["suggested"] == truth[issue["path"]] for issue in issues if issue["path"] in truth)
    return {
        "flips": len(truth),
        "flagged": len(flagged),
        "estimated_errors": found.summary["estimated_label_errors"],
        "precision": round(len(hits) / len(flagged), 3) if flagged else None,
        "recall": round(len(hits) / len(truth), 3) if truth else None,
        "topk_precision": round(len(top_k & set(truth)) / len(truth), 3) if truth else None,
        "suggestion_right": round(right / len(hits), 3) if hits else None,
    }


def label_errors(work: Path, seeds: int) -> dict[str, object]:
    results: dict[str, object] = {}
    for name, source in SETS.items():
        clean = work / f"{name}-clean"
        flipped_copy(source, clean, 0.0, 0)
        tlearn.audit(clean, out=work / f"{name}-clean-audit", quiet=True)  # embeds anything not cached yet
        started = time.perf_counter()
        found = tlearn.audit(clean, out=work / f"{name}-clean-audit", overwrite=True, quiet=True)
        api_s = time.perf_counter() - started
        cli_s, _ = run_tlearn("audit", clean, "--out", work / f"{name}-clean-cli", "-q")
        per_noise = {}
        for noise in NOISE:
            runs = []
            for seed in range(seeds):
                data = work / f"{name}-{noise}-{seed}"
                truth = flipped_copy(source, data, noise, seed)
                runs.append(flag_scores(tlearn.audit(data, out=work / f"{data.name}-audit", quiet=True), truth))
                shutil.rmtree(data)
            per_noise[f"{round(noise * 100)}%"] = {
                "runs": runs,
                **{
                    f"mean_{key}": round(float(np.mean([run[key] for run in runs if run[key] is not None])), 3)
                    for key in ("precision", "recall", "topk_precision", "flagged", "flips")
                },
            }
        results[name] = {
            "images": found.payload["images"],
            "cv_accuracy_clean": round(found.summary["cv_accuracy"], 3),
            "flagged_on_clean_copy": found.summary["label_issues"],
            "audit_cached_api_s": round(api_s, 2),
            "audit_cached_cli_s": round(cli_s, 2),
            "audit_seconds_breakdown": found.payload["seconds"],
            "noise": per_noise,
        }
        print(name, results[name], flush=True)
    return results


def foreign_images(work: Path, name: str) -> list[Path]:
    """Five images that belong nowhere in `name`: one from each other shared set, a grey one, a noise one."""
    others = [other for other in ("hymenoptera", "mri", "pools", "signs") if other != name]
    picked = [sorted(path for path in (SHARED / other / "train").rglob("*") if path.is_file())[3] for other in others]
    grey, noise = work / "grey.png", work / "noise.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(grey)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(noise)
    return [*picked, grey, noise][:PLANTED_OUTLIERS]


def outliers(work: Path) -> dict[str, object]:
    results: dict[str, object] = {}
    for name, source in SETS.items():
        data = work / f"{name}-outliers"
        flipped_copy(source, data, 0.0, 0)
        first = sorted(path.name for path in data.iterdir())[0]
        planted = set()
        for number, path in enumerate(foreign_images(work, name)):
            shutil.copyfile(path, data / first / f"foreign_{number}{path.suffix}")
            planted.add(f"{first}/foreign_{number}{path.suffix}")
        found = tlearn.audit(data, out=work / f"{name}-outliers-audit", quiet=True)
        flagged = {row["path"] for row in found.payload["outliers"]}
        ranking = sorted(found.payload["outliers"], key=lambda row: -row["score"])
        results[name] = {
            "planted": len(planted),
            "planted_found": len(flagged & planted),
            "other_outliers": len(flagged - planted),
            "images": found.payload["images"],
            "fence": found.payload["settings"]["outlier_fence"],
            "flagged": [row["path"] for row in ranking],
        }
        print(name, results[name], flush=True)
    return results


def altered(picture: Image.Image) -> dict[str, Image.Image]:
    width, height = picture.size
    return {
        "jpeg40": picture,  # saved at quality 40 below
        "half": picture.resize((width // 2, height // 2)),
        "crop10": picture.crop((width // 20, height // 20, width - width // 20, height - height // 20)),
        "mirror": ImageOps.mirror(picture),
        "brighter": ImageEnhance.Brightness(picture).enhance(1.2),
    }


def near_duplicates(work: Path) -> dict[str, object]:
    extractor = FeatureExtractor(resolve_backbone("lite0"), cache_root())
    results: dict[str, object] = {}
    for name, source in SETS.items():
        paths = [image.path for image in discover(source).images]
        originals = extractor.embed_files(paths, progress=Progress(quiet=True)).embeddings
        chosen = np.random.default_rng(0).choice(len(paths), ALTERED, replace=False)
        copies, kinds, origin = [], [], []
        for index in chosen:
            with Image.open(paths[index]) as opened:
                picture = opened.convert("RGB")
            for kind, copy in altered(picture).items():
                target = work / f"{name}-copies" / f"{index}_{kind}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                copy.save(target, quality=40 if kind == "jpeg40" else 90)
                copies.append(target)
                kinds.append(kind)
                origin.append(index)
        embedded = extractor.embed_files(copies, progress=Progress(quiet=True)).embeddings
        # Standardised over the set itself with the copies in it, as the audit would see them.
        unit = standardised_unit(np.vstack([originals, embedded]))
        distinct = unit[: len(paths)] @ unit[: len(paths)].T
        np.fill_diagonal(distinct, -1.0)
        similarity = (unit[len(paths) :] * unit[origin]).sum(axis=1)
        kinds_array = np.array(kinds)
        results[name] = {
            "most_similar_distinct_pair": round(float(distinct.max()), 3),
            "threshold": DUPLICATE_SIMILARITY,
            "copies": {
                kind: {
                    "median": round(float(np.median(similarity[kinds_array == kind])), 3),
                    "found": round(float((similarity[kinds_array == kind] >= DUPLICATE_SIMILARITY).mean()), 3),
                }
                for kind in altered(Image.new("RGB", (8, 8)))
            },
        }
        print(name, results[name], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="random flips per data set and noise level")
    parser.add_argument("--skip-duplicates", action="store_true", help="skip the altered-copies measurement")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-audit-"))
    try:
        result = {"label_errors": label_errors(work, args.seeds), "outliers": outliers(work)}
        if not args.skip_duplicates:
            result["near_duplicates"] = near_duplicates(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save("audit", {"load_average_at_end": [round(value, 2) for value in os.getloadavg()], **result})


if __name__ == "__main__":
    main()
