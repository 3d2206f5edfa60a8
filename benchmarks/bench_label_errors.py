"""tlearn's label-error search against cleanlab's, on the same out-of-fold probabilities and planted errors.

    python benchmarks/bench_label_errors.py [--sets hymenoptera,pools,signs,mri] [--rate 0.1] [--seeds 5]
                                            [--multilabel 600] [--name label-errors]

For every shared set, `--rate` of the training labels are flipped to another class at random (per seed), the
linear head's out-of-fold probabilities are computed as `tlearn audit` computes them (Lite0 embeddings, C by
5-fold cross-validation), and both searches flag images from the same probabilities: tlearn's
(`tlearn.audits.label_errors.find_label_issues`) and cleanlab's `find_label_issues` with the same filter
(`prune_by_noise_rate`, cleanlab's default). Reported per set and method: precision and recall against the
flipped images (mean over seeds), flags, images on which the two disagree, and seconds (cleanlab's import
timed apart). cleanlab is a benchmark-only dependency: `pip install cleanlab`. Writes
benchmarks/results/<name>.json.

`--multilabel N` measures label sets instead: N 2x2 mosaics of the shared sets' training images (drawn as
benchmarks/bench_multilabel.py draws them: 1 to 4 of 18 `set:class` labels each), embedded by Lite0 with the
squash crop a multi-label run uses; in `--rate` of the mosaics one class decision is turned the other way (a
label added, or one of several removed), the one-vs-rest heads' out-of-fold probabilities are computed as
`tlearn audit` does for label sets, and tlearn's search (`find_task_label_issues`: confident learning per
class) is compared with cleanlab's `multilabel_classification.filter.find_label_issues` on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import require_shared, save
from bench_features import extract, load


def planted(labels: np.ndarray, classes: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with `rate` of them moved to another class at random, and which ones moved."""
    rng = np.random.default_rng(seed)
    moved = rng.random(len(labels)) < rate
    noisy = labels.copy()
    noisy[moved] = (labels[moved] + rng.integers(1, classes, moved.sum())) % classes
    return noisy, moved


def scores(flagged: np.ndarray, moved: np.ndarray) -> tuple[float, float]:
    hits = int(moved[flagged].sum())
    return hits / max(1, len(flagged)), hits / max(1, int(moved.sum()))


def planted_sets(targets: np.ndarray, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) indicators with one class decision turned in `rate` of the rows (never emptying a set)."""
    rng = np.random.default_rng(seed)
    moved = rng.random(len(targets)) < rate
    noisy = targets.copy()
    for row in np.flatnonzero(moved):
        choices = np.arange(targets.shape[1]) if targets[row].sum() > 1 else np.flatnonzero(targets[row] == 0)
        column = rng.choice(choices)
        noisy[row, column] = 1 - noisy[row, column]
    return noisy, moved


def multilabel_results(count: int, rate: float, seeds: int) -> dict[str, object]:
    """tlearn's and cleanlab's label-set searches on mosaics with planted errors (see the module docstring)."""
    from cleanlab.multilabel_classification.filter import find_label_issues as cleanlab_find

    from bench_multilabel import draw_mosaics, tiles
    from tlearn.audits.label_errors import find_task_label_issues
    from tlearn.backbones.cache import cache_root
    from tlearn.backbones.features import FeatureExtractor
    from tlearn.backbones.registry import resolve_backbone
    from tlearn.evaluation.tasks import MULTI_LABEL
    from tlearn.training.head import select_c
    from tlearn.util.progress import Progress

    with tempfile.TemporaryDirectory(prefix="tlearn-label-sets-") as temp:
        rows = draw_mosaics(tiles(0), count, Path(temp), "dev", seed=0)
        extractor = FeatureExtractor(resolve_backbone("lite0"), cache_root(), crop_mode=MULTI_LABEL.crop_mode)
        embedded = extractor.embed_files([Path(temp) / relpath for relpath, _ in rows], progress=Progress())
    classes = sorted({label for _, labels in rows for label in labels})
    index = {name: k for k, name in enumerate(classes)}
    targets = MULTI_LABEL.targets([[index[name] for name in labels] for _, labels in rows], len(classes))
    per_method: dict[str, list[tuple[float, ...]]] = {"tlearn": [], "cleanlab": []}
    disagree = []
    for seed in range(seeds):
        noisy, moved = planted_sets(targets, rate, seed)
        probabilities = select_c(embedded.embeddings, noisy, len(classes), task=MULTI_LABEL, seed=seed).out_of_fold
        timed = time.perf_counter()
        ours = find_task_label_issues(MULTI_LABEL, probabilities, noisy).flagged
        ours_seconds = time.perf_counter() - timed
        timed = time.perf_counter()
        listed = [MULTI_LABEL.given(row) for row in noisy]
        theirs = np.flatnonzero(cleanlab_find(listed, probabilities, filter_by="prune_by_noise_rate"))
        theirs_seconds = time.perf_counter() - timed
        per_method["tlearn"].append((*scores(ours, moved), len(ours), ours_seconds))
        per_method["cleanlab"].append((*scores(theirs, moved), len(theirs), theirs_seconds))
        disagree.append(len(set(ours.tolist()) ^ set(theirs.tolist())))
        print(f"seed {seed}: tlearn {per_method['tlearn'][-1]}, cleanlab {per_method['cleanlab'][-1]}", flush=True)
    result: dict[str, object] = {
        method: {
            key: round(float(np.mean([row[i] for row in values])), 4)
            for i, key in enumerate(("precision", "recall", "flagged", "seconds"))
        }
        for method, values in per_method.items()
    }
    return {**result, "images_flagged_by_one_only": disagree, "mosaics": count, "classes": len(classes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="hymenoptera,pools,signs,mri")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--features", default="/tmp/tlearn-features")
    parser.add_argument("--multilabel", type=int, help="measure label sets on this many mosaics instead")
    parser.add_argument("--name", default="label-errors")
    args = parser.parse_args()
    require_shared()
    if args.multilabel:
        result = multilabel_results(args.multilabel, args.rate, args.seeds)
        print(result, flush=True)
        save(args.name, {"rate": args.rate, "seeds": args.seeds, "results": {"mosaics": result}})
        return
    from tlearn.audits.label_errors import find_label_issues
    from tlearn.training.head import select_c

    started = time.perf_counter()
    from cleanlab.filter import find_label_issues as cleanlab_find

    import_seconds = time.perf_counter() - started
    out = Path(args.features)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, object]] = {}
    for data_set in args.sets.split(","):
        extract(data_set, "lite0", out)
        stored = load(out, data_set, "lite0")
        classes = sorted(set(stored["train_labels"]))
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[name] for name in stored["train_labels"]])
        features = stored["train_plain"].astype(np.float32)
        rows: dict[str, list[tuple[float, ...]]] = {"tlearn": [], "cleanlab": []}
        disagree = []
        for seed in range(args.seeds):
            noisy, moved = planted(labels, len(classes), args.rate, seed)
            probabilities = select_c(features, noisy, len(classes), seed=seed).out_of_fold
            timed = time.perf_counter()
            ours = find_label_issues(probabilities, noisy).flagged
            ours_seconds = time.perf_counter() - timed
            timed = time.perf_counter()
            theirs = np.flatnonzero(cleanlab_find(noisy, probabilities, filter_by="prune_by_noise_rate"))
            theirs_seconds = time.perf_counter() - timed
            rows["tlearn"].append((*scores(ours, moved), len(ours), ours_seconds))
            rows["cleanlab"].append((*scores(theirs, moved), len(theirs), theirs_seconds))
            disagree.append(len(set(ours.tolist()) ^ set(theirs.tolist())))
        results[data_set] = {
            method: {
                key: round(float(np.mean([row[i] for row in values])), 4)
                for i, key in enumerate(("precision", "recall", "flagged", "seconds"))
            }
            for method, values in rows.items()
        }
        results[data_set]["images_flagged_by_one_only"] = disagree
        print(f"{data_set}: {results[data_set]}", flush=True)
    save(
        args.name,
        {
            "rate": args.rate,
            "seeds": args.seeds,
            "cleanlab_import_seconds": round(import_seconds, 2),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
