"""Run folders written by hand in the schema training writes: faster than training, and every number known.

`multilabel_run`: a multi-label linear run (val + test, four labels, one never present on test, two images
given deliberately wrong answers). `reject_run`: a single-label run trained with a "knn" reject rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import colour_image
from tlearn.evaluation.metrics import classification_metrics
from tlearn.evaluation.multilabel import multilabel_metrics
from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL
from tlearn.runs.layout import RunFolder, prediction_columns
from tlearn.runs.model_dir import ModelConfig, RejectRule, save_model
from tlearn.runs.summary import CSearchRow, HeadRecord, RunSummary, write_summary
from tlearn.util import atomic

MULTILABEL_CLASSES = ["pool", "garage", "tree", "solar"]
MULTILABEL_THRESHOLDS = [0.5, 0.4, 0.6, 0.5]
PREPROCESSING = {
    "input_size": [32, 32],
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "crop_pct": 1.0,
    "crop_mode": "center",
}


@dataclass
class HandBuiltRun:
    path: Path
    metrics: dict[str, dict[str, Any]]
    rows: dict[str, list[dict[str, Any]]]  # split → predictions.csv rows as written
    targets: dict[str, np.ndarray] | None = None  # split → (N, K) given labels (multi-label runs)
    probabilities: dict[str, np.ndarray] | None = None  # split → (N, K)


def write_run(
    folder: Path,
    *,
    data: Path,
    metrics: dict[str, Any],
    rows: list[dict[str, Any]],
    classes: list[str],
    config: dict[str, Any],
    summary: RunSummary,
    imagenet: dict[str, Any] | None = None,
) -> None:
    """The files of a finished training run: metrics, predictions, data report, run.json and the model."""
    files = RunFolder(folder)
    folder.mkdir(parents=True)
    atomic.write_text(files.metrics, json.dumps(metrics))
    atomic.write_csv(files.predictions, rows, prediction_columns(classes, with_split=True))
    counts = {split: {name: 0 for name in classes} for split in metrics}
    atomic.write_text(files.data_report, json.dumps({"data": str(data), "classes": classes, "counts": counts}))
    write_summary(files.summary, summary)
    atomic.write_text(files.imagenet, json.dumps(imagenet or {"reason": "not computed for this test"}))
    state = {"head.weight": np.zeros((len(classes), 8), np.float32), "head.bias": np.zeros(len(classes), np.float32)}
    model = ModelConfig(
        arch="tiny",
        backbone={"name": "tiny-backbone", "arch": "tiny"},
        classes=classes,
        preprocessing=PREPROCESSING,
        embedding_dim=8,
        classifier_keys=("head.weight", "head.bias"),
        mode="linear",
        **config,
    )
    save_model(files.model, state, model)


def write_images(data: Path, paths: list[str]) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(paths):
        colour_image((40 * (index % 6), 90, 200), seed=index).save(data / path)


def multilabel_split(seed: int, n: int, *, solar: bool) -> tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities) of one split: probabilities that mostly follow the labels, with noise."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(MULTILABEL_CLASSES))) < 0.45).astype(np.int8)
    targets[:, 3] = (rng.random(n) < 0.3) if solar else 0
    targets[targets.sum(axis=1) == 0, 0] = 1  # every image carries at least one label
    probabilities = np.clip(0.5 * targets + 0.6 * rng.random(targets.shape) - 0.05, 0.01, 0.99)
    return targets, probabilities.round(6)


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory: pytest.TempPathFactory) -> HandBuiltRun:
    root = tmp_path_factory.mktemp("multilabel")
    splits = {"val": multilabel_split(1, 8, solar=True), "test": multilabel_split(2, 14, solar=False)}
    test_targets, test_probabilities = splits["test"]
    test_targets[0], test_probabilities[0] = [1, 1, 0, 0], [0.02, 0.9, 0.1, 0.1]  # "pool" missed, sure of it
    test_targets[1], test_probabilities[1] = [0, 0, 1, 0], [0.97, 0.2, 0.8, 0.3]  # "pool" added, sure of it
    metrics, rows, paths = {}, {}, {}
    for split, (targets, probabilities) in splits.items():
        paths[split] = [f"{split}_{index:02d}.png" for index in range(len(targets))]
        metrics[split] = multilabel_metrics(targets, probabilities, MULTILABEL_THRESHOLDS, MULTILABEL_CLASSES)
        rows[split] = MULTI_LABEL.prediction_rows(
            paths[split], targets, probabilities, MULTILABEL_CLASSES, MULTILABEL_THRESHOLDS, split=split
        )
    data = root / "data"
    write_images(data, paths["val"] + paths["test"])
    answers = {path: [["swimming pool", 0.6], ["garage", 0.2]] for path in paths["test"][:3]}
    write_run(
        root / "run",
        data=data,
        metrics=metrics,
        rows=rows["val"] + rows["test"],
        classes=MULTILABEL_CLASSES,
        config={"task": "multilabel", "thresholds": MULTILABEL_THRESHOLDS},
        summary=RunSummary(
            task="multilabel",
            seconds=4.2,
            head=HeadRecord(
                c=1.0,
                folds=3,
                cross_validated_images=22,
                cv_accuracy=0.5,
                candidates=[
                    CSearchRow(c=c, cv_loss=0.4 - 0.05 * i, cv_accuracy=0.3 + 0.1 * i)
                    for i, c in enumerate((0.1, 1.0, 10.0))
                ],
            ),
        ),
        imagenet={"answers": answers},
    )
    return HandBuiltRun(
        root / "run",
        metrics,
        rows,
        targets={k: v[0] for k, v in splits.items()},
        probabilities={k: v[1] for k, v in splits.items()},
    )


REJECT_RULE = RejectRule(score="knn", threshold=0.42, k=5, target={"accuracy": 0.95})


def reject_values(labels: np.ndarray, probabilities: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """metrics.json's `reject` entry: answering the images in order of decreasing score."""
    right = probabilities.argmax(axis=1) == labels
    order = np.argsort(-scores, kind="stable")
    answered = scores >= threshold
    counts = np.arange(1, len(labels) + 1)
    return {
        "score": "knn",
        "threshold": threshold,
        "coverage": float(answered.mean()),
        "selective_accuracy": float(right[answered].mean()),
        "accuracy_all": float(right.mean()),
        "answered": int(answered.sum()),
        "curve": {"coverage": (counts / len(labels)).tolist(), "accuracy": (np.cumsum(right[order]) / counts).tolist()},
    }


@pytest.fixture(scope="session")
def reject_run(tmp_path_factory: pytest.TempPathFactory) -> HandBuiltRun:
    root = tmp_path_factory.mktemp("reject")
    classes = ["red", "blue"]
    metrics, rows, paths = {}, {}, []
    for seed, split, n in ((3, "val", 10), (4, "test", 20)):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, n)
        first = np.where(labels == 0, 0.8, 0.2) + rng.normal(0, 0.25, n)
        first[:3] = np.where(labels[:3] == 0, 0.1, 0.9)  # three confident errors
        probabilities = np.stack([np.clip(first, 0.01, 0.99), 1 - np.clip(first, 0.01, 0.99)], axis=1).round(6)
        scores = rng.random(n)
        scores[:3] = 0.1  # the errors look unfamiliar: rejected
        split_paths = [f"{classes[label]}/{split}_{index:02d}.png" for index, label in enumerate(labels)]
        paths += split_paths
        metrics[split] = {
            **classification_metrics(labels, probabilities, classes),
            "reject": reject_values(labels, probabilities, scores, REJECT_RULE.threshold),
        }
        rows[split] = SINGLE_LABEL.prediction_rows(split_paths, labels, probabilities, classes, None, split=split)
    data = root / "data"
    for name in classes:
        (data / name).mkdir(parents=True)
    write_images(data, paths)
    write_run(
        root / "run",
        data=data,
        metrics=metrics,
        rows=rows["val"] + rows["test"],
        classes=classes,
        config={"reject": REJECT_RULE},
        summary=RunSummary(seconds=2.0),
    )
    return HandBuiltRun(root / "run", metrics, rows)
