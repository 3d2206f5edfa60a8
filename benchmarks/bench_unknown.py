"""Answering "unknown" for never-taught classes: rejection AUROC, rejection rate and the accuracy it buys.

    python benchmarks/bench_unknown.py [--modes linear,auto] [--settings knn,knn:coverage=0.8,confidence]

Protocol (issue 14), on signs and mri, twice each with different held-out classes: train on the training
images of the other classes only (a label file listing them; `--split 80,20,0`; `--reject SCORE` with its
default target — knn: answer 95% of val images, confidence: 95% of answers right — or the one given), then
predict every image of the set's test folder — known classes and never-taught ones — with the saved model.
Reported per case:

* `auroc`: how well the reject score separates known-class test images (positives) from never-taught ones;
* `unknown_rejected`: share of never-taught images answered "unknown" at the stored threshold;
* `known_answered`: share of known-class images answered (coverage);
* `known_accuracy_all` / `known_accuracy_answered`: the best guess's accuracy on all known-class images and on
  the answered ones (it should rise).

Goal: AUROC >= 0.85 and >= 80% of never-taught images rejected while known-class accuracy on the answered
images rises. Mode "auto" fine-tunes (minutes per case on a CPU); the knn score then compares the
fine-tuned network's own embeddings.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import tlearn
from _common import SHARED, require_shared, run_tlearn, save

CASES = {
    "signs-without-8-9": ("signs", ("8", "9")),
    "signs-without-0-5": ("signs", ("0", "5")),
    "mri-without-pituitary": ("mri", ("pituitary_tumor",)),
    "mri-without-glioma": ("mri", ("glioma_tumor",)),
}


def images(folder: Path) -> list[tuple[Path, str]]:
    return [(path, path.parent.name) for path in sorted(folder.glob("*/*")) if path.is_file()]


def known_label_file(path: Path, train: Path, held_out: tuple[str, ...]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((str(image), label) for image, label in images(train) if label not in held_out)
    return path


def measure(model: Path, test: Path, held_out: tuple[str, ...]) -> dict[str, float]:
    listed = images(test)
    predictions = tlearn.load(model).predict([path for path, _ in listed], top_k=1)
    known = np.array([label not in held_out for _, label in listed])
    scores = np.array([prediction.reject_score for prediction in predictions], dtype=np.float64)
    answered = np.array([not prediction.unknown for prediction in predictions])
    right = np.array(
        [prediction.labels[0] == label for prediction, (_, label) in zip(predictions, listed, strict=True)]
    )
    return {
        "auroc": round(float(roc_auc_score(known, scores)), 3),
        "unknown_rejected": round(float((~answered[~known]).mean()), 3),
        "known_answered": round(float(answered[known].mean()), 3),
        "known_accuracy_all": round(float(right[known].mean()), 3),
        "known_accuracy_answered": round(float(right[known & answered].mean()), 3)
        if (known & answered).any()
        else None,
        "known_images": int(known.sum()),
        "unknown_images": int((~known).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="linear", help="comma-separated training modes (linear, auto)")
    parser.add_argument(
        "--settings",
        default="knn,knn:coverage=0.8,confidence",
        help="comma-separated reject settings: a score (knn, confidence) with its default target, or "
        "score:coverage=C / score:accuracy=A",
    )
    parser.add_argument("--name", default="unknown", help="results file: benchmarks/results/NAME.json")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-unknown-"))
    results: dict[str, dict] = {}
    try:
        for case, (name, held_out) in CASES.items():
            (work / "labels").mkdir(exist_ok=True)  # the label file's folder is its data folder: runs go beside it
            labels = known_label_file(work / "labels" / f"{case}.csv", SHARED / name / "train", held_out)
            for mode in args.modes.split(","):
                for setting in args.settings.split(","):
                    score, _, target = setting.partition(":")
                    option = [f"--target-{target.split('=')[0]}", target.split("=")[1]] if target else []
                    run = work / f"{case}-{mode}-{setting.replace(':', '-').replace('=', '')}"
                    seconds, _ = run_tlearn(
                        "train",
                        labels,
                        "--out",
                        run,
                        "--mode",
                        mode,
                        "--reject",
                        score,
                        *option,
                        "--split",
                        "80,20,0",
                        "-q",
                    )
                    figures = {
                        "train_seconds": round(seconds, 1),
                        **measure(run / "model", SHARED / name / "test", held_out),
                    }
                    results.setdefault(case, {})[f"{mode}/{setting}"] = figures
                    print(case, mode, setting, json.dumps(figures), flush=True)
        summary = {}
        for key in {key for case in results.values() for key in case}:
            rows = [case[key] for case in results.values() if key in case]
            summary[key] = {
                figure: round(float(np.mean([row[figure] for row in rows])), 3)
                for figure in (
                    "auroc",
                    "unknown_rejected",
                    "known_answered",
                    "known_accuracy_all",
                    "known_accuracy_answered",
                )
            }
        save(args.name, {"cases": results, "mean": summary, "goal": "AUROC >= 0.85, >= 80% of never-taught rejected"})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
