"""`tlearn select` against the accuracy each backbone really reaches: Kendall's tau of its rankings.

    python benchmarks/bench_select.py [--finetune [--epochs N] | --finetuned-from RESULTS.json]

Protocol, on the four shared sets (hymenoptera train → val, pools, signs and mri train → test), for lite0, lite1
and lite2:

* the selection: `tlearn.select` on a folder holding the set's train/ (and its held-out split as test/, which
  the selection never reads), embeddings cached beforehand, so the seconds are those of the ranking itself;
* the truth, always: the linear probe's test accuracy (tlearn's head fitted on all of train/, scored once on
  the held-out split);
* the truth, with `--finetune`: `tlearn train train/ --mode finetune --backbone X` then `tlearn evaluate` on the
  held-out split. Three backbones on four sets is about 25 minutes on 2 CPU cores, hence optional;
  `--finetuned-from` takes these accuracies from an earlier results file instead (they do not depend on the
  selection, so a change to the ranking can be checked against them in seconds);
* Kendall's tau (tau-b) between each ranking score (cross-validated probe accuracy, LogME, k-NN) and each
  truth, per set, and the mean over sets. With three backbones a tau is one of -1, -1/3, 1/3, 1 (or 0 with
  ties), so single sets say little; pools' test split has 4 images, so its truth is mostly noise.

Timings: 2 CPU cores; the load average at the end is saved beside them (above 1: something else was running).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

import tlearn
from _common import SHARED, require_shared, run_tlearn, save
from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import resolve_backbone
from tlearn.data.discovery import discover_for_evaluation
from tlearn.training.head import fit_head, one_blas_thread, select_c
from tlearn.util.progress import Progress

BACKBONES = ("lite0", "lite1", "lite2")
SETS = {
    "hymenoptera": ("hymenoptera/train", "hymenoptera/val"),
    "pools": ("pools/train", "pools/test"),
    "signs": ("signs/train", "signs/test"),
    "mri": ("mri/train", "mri/test"),
}
SCORES = ("accuracy", "logme", "knn_accuracy")
REPORTED = (
    *("rank", "accuracy", "interval", "p_vs_best", "logme", "knn_accuracy"),
    *("probe_seconds", "embed_seconds", "parameters", "images_per_second"),
)


def held_out_layout(work: Path, name: str) -> Path:
    """DATA/train = the set's train/, DATA/test = its held-out split: copies (links out of DATA are not followed)."""
    train, held_out = (SHARED / part for part in SETS[name])
    data = work / name
    shutil.copytree(train, data / "train")
    shutil.copytree(held_out, data / "test")
    return data


def embedded(folder: Path, backbone: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of a folder of classes (no split), embedded through the cache, with labels and class names."""
    source, _ = discover_for_evaluation(folder)
    extractor = FeatureExtractor(resolve_backbone(backbone), cache_root())
    result = extractor.embed_files([image.path for image in source.images], progress=Progress(quiet=True))
    usable = [p for p in range(len(source.images)) if p not in result.failures]
    labels = np.array([source.classes.index(source.images[p].label) for p in usable])
    return result.embeddings[usable], labels, source.classes


def probe_test_accuracy(name: str, backbone: str) -> float:
    """The linear head fitted on all of train/ (C by cross-validation), scored once on the held-out split."""
    train, held_out = (SHARED / part for part in SETS[name])
    train_x, train_y, classes = embedded(train, backbone)
    test_x, test_y, test_classes = embedded(held_out, backbone)
    test_y = np.array([classes.index(test_classes[label]) for label in test_y])
    with one_blas_thread():
        chosen = select_c(train_x, train_y, len(classes))
        head = fit_head(train_x, train_y, len(classes), chosen.c)
    return float((head.probabilities(test_x).argmax(axis=1) == test_y).mean())


def finetuned_test_accuracy(work: Path, name: str, backbone: str, epochs: int) -> float:
    train, held_out = (SHARED / part for part in SETS[name])
    run = work / f"ft-{name}-{backbone}"
    run_tlearn("train", train, "--out", run, "--mode", "finetune", "--backbone", backbone, "--epochs", epochs, "-q")
    run_tlearn("evaluate", run / "model", held_out, "--out", work / f"eval-{name}-{backbone}", "-q")
    metrics = json.loads((work / f"eval-{name}-{backbone}" / "metrics.json").read_text())
    return float(next(iter(metrics.values()))["accuracy"])


def tau(scores: list[float], truth: list[float]) -> float | None:
    statistic = kendalltau(scores, truth).statistic
    return None if np.isnan(statistic) else round(float(statistic), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finetune", action="store_true", help="also fine-tune every backbone (an hour or more)")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs with --finetune")
    parser.add_argument("--finetuned-from", type=Path, help="fine-tuned accuracies of an earlier --finetune run")
    args = parser.parse_args()
    earlier = json.loads(args.finetuned_from.read_text())["sets"] if args.finetuned_from else {}
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-select-"))
    sets = {}
    try:
        for name in SETS:
            data = held_out_layout(work, name)
            for backbone in BACKBONES:
                embedded(data / "train", backbone)  # cached beforehand: the selection's seconds are its own
            started = time.perf_counter()
            selection = tlearn.select(data, backbones=BACKBONES, quiet=True)
            select_s = time.perf_counter() - started
            rows = {row["name"]: row for row in selection.candidates}
            truths = {"probe_test_accuracy": {b: probe_test_accuracy(name, b) for b in BACKBONES}}
            if args.finetune:
                truths["finetune_test_accuracy"] = {
                    b: finetuned_test_accuracy(work, name, b, args.epochs) for b in BACKBONES
                }
            elif name in earlier:
                truths["finetune_test_accuracy"] = earlier[name]["finetune_test_accuracy"]
            sets[name] = {
                "images": selection.payload["images"],
                "winner": selection.winner["name"],
                "select_s": round(select_s, 2),
                "candidates": {b: {key: rows[b][key] for key in REPORTED} for b in BACKBONES},
                **truths,
                "kendall_tau": {
                    f"{score} vs {truth}": tau([rows[b][score] for b in BACKBONES], [values[b] for b in BACKBONES])
                    for score in SCORES
                    for truth, values in truths.items()
                },
            }
            print(name, json.dumps(sets[name]), flush=True)
            shutil.rmtree(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pairs = next(iter(sets.values()))["kendall_tau"]
    mean_tau = {
        pair: round(
            float(np.mean([s["kendall_tau"][pair] for s in sets.values() if s["kendall_tau"][pair] is not None])), 3
        )
        for pair in pairs
    }
    seconds = [s["candidates"][b]["probe_seconds"] for s in sets.values() for b in BACKBONES]
    save(
        "select",
        {
            "command": "tlearn.select(DATA, backbones=('lite0', 'lite1', 'lite2')); DATA = train/ + held-out test/",
            "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
            "finetuned": args.finetune or (f"taken from {args.finetuned_from.name}" if earlier else False),
            "mean_kendall_tau": mean_tau,
            "probe_seconds_per_backbone_mean": round(float(np.mean(seconds)), 3),
            "sets": sets,
        },
    )


if __name__ == "__main__":
    main()
