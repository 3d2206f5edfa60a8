"""Which frozen features make the best linear head: backbones, mirrored views, multi-layer pooling, concatenations.

    python benchmarks/bench_features.py [--sets hymenoptera,pools,signs,mri] [--backbones lite0,lite1,lite2]
                                        [--draws 3] [--name features]

For every shared set and embedded backbone, each training and held-out image is embedded once as it is and once
mirrored, together with the average-pooled output of every block (the "multi-layer" features), and stored in
a scratch folder (`--features`, default /tmp/tlearn-features) so the evaluation can be re-run in seconds.
Then every candidate feature set gets the linear head tlearn fits (C by 5-fold cross-validation on the
training images) and is scored two ways: the mean out-of-fold accuracy over `--draws` draws of the folds on
the training folder (what a run can see when it chooses), and accuracy on the held-out folder (what the user
gets). Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _common import SHARED, require_shared, save

SETS = {"hymenoptera": "val", "pools": "test", "signs": "test", "mri": "test"}
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def labelled_files(folder: Path) -> tuple[list[Path], list[str]]:
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in EXTENSIONS)
    return files, [path.relative_to(folder).parts[0] for path in files]


def extract(data_set: str, backbone: str, out: Path) -> None:
    """Embeddings (plain, mirrored) and pooled block outputs of train and held-out files, saved as .npz."""
    import torch

    from tlearn.backbones.cache import cache_root
    from tlearn.backbones.registry import resolve_backbone
    from tlearn.backbones.timm_models import load_backbone
    from tlearn.data.decoding import BatchDecoder
    from tlearn.data.preprocess import normalize
    from tlearn.util.progress import Progress

    path = out / f"{data_set}-{backbone}.npz"
    if path.is_file():
        return
    loaded = load_backbone(
        resolve_backbone(backbone), cache_root=cache_root(), device=torch.device("cpu"), progress=Progress(quiet=True)
    )
    model, preprocessing = loaded.model, loaded.info.preprocessing
    arrays: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for split in ("train", SETS[data_set]):
        files, labels = labelled_files(SHARED / data_set / split)
        plain, mirrored, layers = [], [], []
        with BatchDecoder(files, preprocessing, batch_size=32, workers=1) as batches, torch.inference_mode():
            for batch in batches:
                assert not batch.failures, batch.failures
                for view, rows in ((batch.pixels, plain), (batch.pixels[:, :, ::-1], mirrored)):
                    x = torch.from_numpy(normalize(np.ascontiguousarray(view), preprocessing))
                    x = model.bn1(model.conv_stem(x))
                    pooled = []
                    for block in model.blocks:
                        x = block(x)
                        pooled.append(x.mean((2, 3)))
                    x = model.bn2(model.conv_head(x))
                    rows.append(x.mean((2, 3)).numpy())
                    if rows is plain:
                        layers.append(torch.cat(pooled, dim=1).numpy())
        name = "train" if split == "train" else "test"
        arrays[f"{name}_plain"] = np.concatenate(plain)
        arrays[f"{name}_mirrored"] = np.concatenate(mirrored)
        arrays[f"{name}_layers"] = np.concatenate(layers)
        arrays[f"{name}_labels"] = np.array(labels)
    np.savez(path, **arrays)
    print(f"{data_set} {backbone}: extracted in {time.perf_counter() - started:.0f} s", flush=True)


def load(out: Path, data_set: str, backbone: str) -> dict[str, np.ndarray]:
    with np.load(out / f"{data_set}-{backbone}.npz") as stored:
        return dict(stored)


def candidates(stored: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[list[tuple[str, str]], bool | str]]:
    """name → (feature blocks as (backbone, kind), mirrored views: True to train and test on both, "test" to
    average only the test images' two views) of every candidate feature set."""
    names = list(stored)
    found: dict[str, tuple[list[tuple[str, str]], bool]] = {}
    for backbone in names:
        found[backbone] = ([(backbone, "plain")], False)
        found[f"{backbone}+flip"] = ([(backbone, "plain")], True)
        found[f"{backbone}+testflip"] = ([(backbone, "plain")], "test")
        found[f"{backbone}+layers"] = ([(backbone, "plain"), (backbone, "layers")], False)
        found[f"{backbone}+layers+flip"] = ([(backbone, "plain"), (backbone, "layers")], True)
    if len(names) > 1:
        found["+".join(names)] = ([(backbone, "plain") for backbone in names], False)
        found["+".join(names) + "+flip"] = ([(backbone, "plain") for backbone in names], True)
    return found


def features(stored, blocks, split: str, view: str) -> np.ndarray:
    """The concatenated feature blocks of one split; `view` "mirrored" swaps the plain embedding for the mirror's
    (the layers are only stored for the plain view, so they are reused)."""
    parts = []
    for backbone, kind in blocks:
        key = f"{split}_{'mirrored' if kind == 'plain' and view == 'mirrored' else kind}"
        parts.append(stored[backbone][key])
    return np.concatenate(parts, axis=1).astype(np.float32)


def score(stored, blocks, flip: bool, labels_train, labels_test, classes, draws: int) -> dict[str, float]:
    from tlearn.training.head import fit_head, select_c

    train = features(stored, blocks, "train", "plain")
    test = features(stored, blocks, "test", "plain")
    started = time.perf_counter()
    cv = []
    chosen = []
    for draw in range(draws):
        if flip is True:  # both views of an image always share a fold: the mirror must not leak into its own test fold
            selection = _select_c_paired(train, features(stored, blocks, "train", "mirrored"), labels_train, draw)
        else:
            selection = select_c(train, labels_train, len(classes), seed=draw)
        cv.append(float((selection.out_of_fold.argmax(1) == labels_train).mean()))
        chosen.append(selection.c)
    c = chosen[0]
    if flip is True:
        x = np.concatenate([train, features(stored, blocks, "train", "mirrored")])
        head = fit_head(x, np.concatenate([labels_train, labels_train]), len(classes), c)
        mirrored = features(stored, blocks, "test", "mirrored")
        probabilities = (head.probabilities(test) + head.probabilities(mirrored)) / 2
    else:
        head = fit_head(train, labels_train, len(classes), c)
        probabilities = head.probabilities(test)
        if flip == "test":  # a head trained on the plain view, each test image averaged with its mirror
            probabilities = (probabilities + head.probabilities(features(stored, blocks, "test", "mirrored"))) / 2
    return {
        "cv_accuracy": round(float(np.mean(cv)), 4),
        "cv_sd": round(float(np.std(cv)), 4),
        "test_accuracy": round(float((probabilities.argmax(1) == labels_test).mean()), 4),
        "c": c,
        "seconds": round(time.perf_counter() - started, 2),
        "dims": int(train.shape[1]),
    }


def _select_c_paired(plain: np.ndarray, mirrored: np.ndarray, labels: np.ndarray, seed: int):
    """select_c over both views with folds drawn per image: out-of-fold probabilities averaged over the views."""
    from tlearn.evaluation.tasks import SINGLE_LABEL
    from tlearn.training.head import DEFAULT_C_GRID, HeadSelection, fit_head
    from tlearn.util.numeric import cross_entropy

    folds = SINGLE_LABEL.folds(labels, 5, seed)
    num_classes = int(labels.max()) + 1
    out = {c: np.zeros((len(labels), num_classes)) for c in DEFAULT_C_GRID}
    for fold in range(5):
        held, kept = folds == fold, folds != fold
        x = np.concatenate([plain[kept], mirrored[kept]])
        y = np.concatenate([labels[kept], labels[kept]])
        for c in DEFAULT_C_GRID:
            head = fit_head(x, y, num_classes, c, seed=seed)
            out[c][held] = (head.probabilities(plain[held]) + head.probabilities(mirrored[held])) / 2
    rows = [{"c": c, "cv_loss": cross_entropy(out[c], labels)} for c in DEFAULT_C_GRID]
    best = min(rows, key=lambda row: row["cv_loss"])["c"]
    return HeadSelection(best, 5, rows, out[best])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--backbones", default="lite0,lite1,lite2")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--features", default="/tmp/tlearn-features")
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument("--name", default="features")
    args = parser.parse_args()
    require_shared()
    out = Path(args.features)
    out.mkdir(parents=True, exist_ok=True)
    backbones = args.backbones.split(",")
    for data_set in args.sets.split(","):
        for backbone in backbones:
            extract(data_set, backbone, out)
    if args.extract_only:
        return
    results: dict[str, dict[str, dict[str, float]]] = {}
    for data_set in args.sets.split(","):
        stored = {backbone: load(out, data_set, backbone) for backbone in backbones}
        first = stored[backbones[0]]
        classes = sorted(set(first["train_labels"]))
        index = {name: i for i, name in enumerate(classes)}
        labels_train = np.array([index[name] for name in first["train_labels"]])
        labels_test = np.array([index[name] for name in first["test_labels"]])
        results[data_set] = {}
        for name, (blocks, flip) in candidates(stored).items():
            results[data_set][name] = score(stored, blocks, flip, labels_train, labels_test, classes, args.draws)
            print(f"{data_set} {name}: {json.dumps(results[data_set][name])}", flush=True)
    names = list(next(iter(results.values())))
    means = {
        name: {
            "cv_accuracy": round(float(np.mean([results[s][name]["cv_accuracy"] for s in results])), 4),
            "test_accuracy": round(float(np.mean([results[s][name]["test_accuracy"] for s in results])), 4),
        }
        for name in names
    }
    for name, mean in sorted(means.items(), key=lambda item: -item[1]["test_accuracy"]):
        print(f"mean {name}: cv {mean['cv_accuracy']:.4f} test {mean['test_accuracy']:.4f}")
    save(args.name, {"draws": args.draws, "results": results, "means": means})


if __name__ == "__main__":
    main()
