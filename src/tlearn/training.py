"""`tlearn.train`: from a data folder to a run directory holding a trained, evaluated model.

The steps, each in its own module: discover the images (`discovery`), embed them with the frozen backbone
through the cache (`features`), check what could be used (`data_report`), fit the linear head on the
embeddings (`head`), optionally fine-tune (`finetune`), measure (`metrics`) and write the outputs
(`model_files`, `rundir`). Torch is only imported when a step needs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlearn import __version__, atomic
from tlearn.backbone_registry import resolve_backbone
from tlearn.cache import cache_root
from tlearn.config import TrainConfig
from tlearn.data_report import CheckedData, check_data, summary_lines
from tlearn.discovery import discover
from tlearn.errors import DataError
from tlearn.features import FeatureExtractor
from tlearn.head import SKLEARN_MODULES, fit_linear_head, refit_linear_head
from tlearn.metrics import classification_metrics
from tlearn.model_files import ModelConfig, linear_model_state, save_model
from tlearn.progress import Progress
from tlearn.rundir import HISTORY_COLUMNS, history_row, prepare_run_dir

EVALUATED_SPLITS = ("val", "test")


@dataclass
class Run:
    """A finished training run.

    Example:
        >>> run = run_training(TrainConfig(data="data/"), out="runs/first")  # doctest: +SKIP
        >>> run.metrics["test"]["accuracy"]  # doctest: +SKIP
    """

    path: Path
    config: TrainConfig
    metrics: dict[str, dict[str, Any]]
    history_rows: list[dict[str, Any]]
    data_report: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        """The model directory (`RUN/model`)."""
        return self.path / "model"

    @property
    def history(self):
        """Per-epoch history: a pandas DataFrame when pandas is installed, else the list of rows."""
        try:
            import pandas
        except ImportError:
            return self.history_rows
        return pandas.DataFrame(self.history_rows, columns=HISTORY_COLUMNS)


def run_training(config: TrainConfig, *, out: str | Path, overwrite: bool = False, progress: Progress | None = None) -> Run:
    """Train and evaluate a classifier on `config.data`, writing everything under `out`.

    Raises:
        TlearnError: unusable data folder, backbone or run directory (one-line message).
    """
    progress = progress or Progress()
    started = time.perf_counter()
    if config.device != "auto" and config.device != "cpu":
        from tlearn.devices import resolve_device  # deferred: imports torch; fail before any work is done

        resolve_device(config.device)
    run_dir = prepare_run_dir(out, overwrite=overwrite)
    source = discover(config.data, split_fractions=config.split)
    ref = resolve_backbone(config.backbone, config.weights)
    extractor = FeatureExtractor(
        ref, cache_root(), device=config.device, batch_size=config.batch_size, workers=config.workers,
        max_pixels=config.max_image_pixels, import_while_computing=SKLEARN_MODULES,
    )
    embedded = extractor.embed_files([image.path for image in source.images], progress=progress)
    progress.info(f"embeddings: {embedded.cache_hits} cached, {embedded.computed} computed "
                  f"({embedded.seconds:.1f} s, backbone {ref.arch})")
    checked = check_data(source, embedded.content_hashes, embedded.failures)
    for line in summary_lines(checked.report):
        progress.info(line)
    _require_trainable(checked)

    features = {split: embedded.embeddings[checked.positions[split]] for split in ("train", "val", "test")}
    labels = {split: np.asarray(checked.labels(split), dtype=np.int64) for split in ("train", "val", "test")}
    balanced = config.balance == "on" or (config.balance == "auto" and checked.report["imbalance"]["imbalanced"])
    head_started = time.perf_counter()
    fit = fit_linear_head(features["train"], labels["train"], features["val"], labels["val"], len(source.classes),
                          balanced=balanced, seed=config.seed)
    chosen = next(row for row in fit.candidates if row["c"] == fit.c)
    evaluated = [split for split in EVALUATED_SPLITS if len(labels[split])]
    # Validation figures come from the head fitted on train alone (honest); the saved head is then refit on
    # train + val with the chosen C when a test split keeps the final evaluation untouched.
    probabilities = {split: fit.head.probabilities(features[split]) for split in evaluated}
    head = fit.head
    refit = config.mode == "linear" and config.refit and "test" in evaluated
    if refit:
        head = refit_linear_head(np.concatenate([features["train"], features["val"]]),
                                 np.concatenate([labels["train"], labels["val"]]), len(source.classes), fit.c,
                                 balanced=balanced, seed=config.seed)
        probabilities["test"] = head.probabilities(features["test"])
    head_seconds = time.perf_counter() - head_started
    history = [history_row(0, "linear head", chosen["train_loss"], chosen["train_accuracy"], chosen["val_loss"],
                           chosen["val_accuracy"], None, head_seconds)]
    info = embedded.info
    model_config = ModelConfig(
        arch=info.arch, backbone=ref.describe(), classes=source.classes,
        preprocessing=info.preprocessing.to_dict(), embedding_dim=info.num_features,
        classifier_keys=info.classifier_keys, mode=config.mode,
    )
    state = linear_model_state(extractor.stored_weights(progress), info.classifier_keys, head.weight, head.bias)
    finetune_summary: dict[str, Any] = {}
    if config.mode == "finetune":
        from tlearn.finetune import LabelledFiles, finetune  # deferred: imports torch

        splits = {split: LabelledFiles([source.images[p].path for p in checked.positions[split]], labels[split])
                  for split in ("train", *evaluated)}
        class_weights = _class_weights(labels["train"], len(source.classes)) if balanced else None
        outcome = finetune(config=config, model_config=model_config, initial_state=state, splits=splits,
                           class_weights=class_weights, progress=progress)
        state, probabilities = outcome.state, outcome.probabilities
        history += outcome.history[1:]
        finetune_summary = {"best_epoch": outcome.best_epoch, "images_per_second": outcome.images_per_second}

    metrics = {split: classification_metrics(labels[split], probabilities[split], source.classes) for split in evaluated}
    model_config = model_config.model_copy(update={"metrics": _headline(metrics)})
    save_model(run_dir / "model", state, model_config)
    summary = {
        "tlearn_version": __version__,
        "mode": config.mode,
        "backbone": ref.describe(),
        "classes": source.classes,
        "seconds": round(time.perf_counter() - started, 3),
        "embedding": {"cache_hits": embedded.cache_hits, "computed": embedded.computed,
                      "seconds": round(embedded.seconds, 3), "corrupt_cache_entries": embedded.corrupt_cache_entries},
        "head": {"c": fit.c, "balanced_loss": balanced, "refit_on_train_and_val": refit,
                 "candidates": fit.candidates},
        "finetune": finetune_summary,
        "model_bytes": (run_dir / "model" / "model.safetensors").stat().st_size,
    }
    _write_outputs(run_dir, config, checked, metrics, history, probabilities, summary)
    for split in evaluated:
        progress.info(f"{split}: accuracy {metrics[split]['accuracy']:.3f}, macro F1 {metrics[split]['macro_f1']:.3f} "
                      f"(n={metrics[split]['n']})")
    return Run(run_dir, config, metrics, history, checked.report, summary)


def _require_trainable(checked: CheckedData) -> None:
    """Every class needs training images and the validation split must not be empty."""
    train_counts = checked.counts("train")
    where = checked.source.root
    for name, count in train_counts.items():
        if count == 0:
            raise DataError(f"{where}: class {name!r} has no usable training images left after skipping bad files "
                            "(see data_report.json)")
    if not checked.positions["val"]:
        raise DataError(f"{where}: the validation split is empty; add images or give a larger val share (--split)")


def _class_weights(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (C * count): the weighting scikit-learn calls "balanced"."""
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    return (len(train_labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def _headline(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {split: {key: values[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "n")}
            for split, values in metrics.items()}


def _write_outputs(
    run_dir: Path,
    config: TrainConfig,
    checked: CheckedData,
    metrics: dict[str, dict[str, Any]],
    history: list[dict[str, Any]],
    probabilities: dict[str, np.ndarray],
    summary: dict[str, Any],
) -> None:
    classes = checked.source.classes
    atomic.write_json(run_dir / "metrics.json", metrics)
    atomic.write_csv(run_dir / "history.csv", history, HISTORY_COLUMNS)
    atomic.write_json(run_dir / "data_report.json", checked.report)
    atomic.write_json(run_dir / "splits.json", {split: checked.relpaths(split) for split in ("train", "val", "test")})
    atomic.write_text(run_dir / "config.yaml", config.to_yaml())
    atomic.write_json(run_dir / "run.json", summary)
    rows = []
    for split, matrix in probabilities.items():
        for relpath, label, row in zip(checked.relpaths(split), checked.labels(split), matrix, strict=True):
            rows.append({"path": relpath, "split": split, "label": classes[label],
                         "predicted": classes[int(row.argmax())], "confidence": round(float(row.max()), 6),
                         **{f"p_{name}": round(float(value), 6) for name, value in zip(classes, row, strict=True)}})
    atomic.write_csv(run_dir / "predictions.csv", rows,
                     ["path", "split", "label", "predicted", "confidence", *[f"p_{name}" for name in classes]])
