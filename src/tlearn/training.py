"""`tlearn.train`: from a data folder to a run directory holding a trained, evaluated model.

The steps, each in its own module: discover the images (`discovery`), embed them with the frozen backbone
through the cache (`features`), check what could be used (`data_report`), fit the linear head on the
embeddings (`head`), optionally fine-tune (`finetune`), measure (`metrics`) and write the outputs
(`model_files`, `rundir`). Torch is only imported when a step needs it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlearn import __version__, atomic
from tlearn.backbone_registry import BackboneInfo, BackboneRef, resolve_backbone
from tlearn.cache import cache_root
from tlearn.calibration import apply_temperature, fit_temperature
from tlearn.config import TrainConfig
from tlearn.data_report import CheckedData, check_data, summary_lines
from tlearn.discovery import DataSource, discover
from tlearn.display import RunReport
from tlearn.distributed import DistributedContext
from tlearn.errors import DataError, RunDirError
from tlearn.features import FeatureExtractor
from tlearn.head import SKLEARN_MODULES, fit_linear_head, refit_linear_head
from tlearn.metrics import classification_metrics
from tlearn.model_files import ModelConfig, linear_model_state, save_model
from tlearn.progress import Progress
from tlearn.report import write_report
from tlearn.rundir import HISTORY_COLUMNS, history_row, prepare_run_dir
from tlearn.tracking import Tracker

EVALUATED_SPLITS = ("val", "test")
# Needed for the report at the end of a run; imported in the background while the backbone computes.
REPORT_MODULES = ("tlearn.figures", "jinja2")


@dataclass
class Run:
    """A finished training run: its metrics and history in memory, everything else under `path`.

    Example:
        >>> run = tlearn.train("data/", out="runs/first")  # doctest: +SKIP
        >>> run.metrics["test"]["accuracy"], run.history  # doctest: +SKIP
        >>> run.report()  # doctest: +SKIP
    """

    path: Path
    config: TrainConfig
    metrics: dict[str, dict[str, Any]]
    history_rows: list[dict[str, Any]]
    data_report: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    rank: int = 0  # this process's rank when trained under torchrun

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

    def report(self) -> RunReport:
        """The run's report: metrics, training curves and confusion matrix inline in Jupyter; elsewhere one
        line of headline metrics and the path of `report.html`.

        Example:
            >>> run.report()  # doctest: +SKIP
            test: accuracy 0.960, macro F1 0.959 (n=50); full report: runs/first/report.html
        """
        return RunReport(self.path)


def run_training(
    config: TrainConfig,
    *,
    out: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
) -> Run:
    """Train and evaluate a classifier on `config.data`, writing everything under `out`.

    Under torchrun every rank calls this; embedding is sharded across ranks, fine-tuning uses DDP, and only
    rank 0 writes files and prints.

    Raises:
        TlearnError: unusable data folder, backbone or run directory (one-line message).
    """
    started = time.perf_counter()
    if config.device not in ("auto", "cpu"):
        from tlearn.devices import resolve_device  # deferred: imports torch; fail before any work is done

        resolve_device(config.device)
    dist = DistributedContext.from_environment(config.device)
    progress = (progress or Progress()) if dist.is_main else Progress(quiet=True)
    run_dir = Path(out).expanduser()
    if resume and (run_dir / "model").is_dir() and not (run_dir / "checkpoints").is_dir():
        raise RunDirError(
            f"{run_dir}: the run is already complete (nothing to resume); its model is {run_dir / 'model'}"
        )
    # Data folder and backbone are checked before --out is created, so a mistyped command leaves nothing behind.
    source = discover(config.data, split_fractions=config.split)
    ref = resolve_backbone(config.backbone, config.weights)
    if dist.is_main:
        prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
        atomic.write_text(run_dir / "config.yaml", config.to_yaml())  # first, so a crashed run can resume
    dist.barrier()
    tracker = Tracker(
        run_dir / "tb" if dist.is_main else None,
        mlflow_uri=config.mlflow if dist.is_main else None,
        run_name=run_dir.name,
    )
    with tracker:
        prepared = _embed_and_check(config, source, ref, dist, progress)
        linear = _fit_linear(config, prepared)
        result = linear
        if config.mode == "finetune":
            result = _finetune(config, prepared, linear, run_dir, resume, dist, tracker, progress)
        temperature = 1.0
        if config.calibrate:  # temperature scaling: fitted on val, stored in the model, applied to every split
            temperature = fit_temperature(result.probabilities["val"], prepared.labels["val"])
            result.probabilities = {
                split: apply_temperature(values, temperature) for split, values in result.probabilities.items()
            }
            progress.info(f"calibration: temperature {temperature:.3f} fitted on val (1 when val has no errors)")
        metrics = {
            split: classification_metrics(prepared.labels[split], result.probabilities[split], prepared.classes)
            for split in prepared.evaluated
        }
        summary = {
            "tlearn_version": __version__,
            "mode": config.mode,
            "backbone": prepared.ref.describe(),
            "classes": prepared.classes,
            "world_size": dist.world_size,
            "seconds": round(time.perf_counter() - started, 3),
            "embedding": prepared.embedding_summary,
            "head": linear.head_summary,
            "finetune": result.finetune_summary,
        }
        if dist.is_main:
            _write_run(
                run_dir,
                config,
                prepared,
                linear.model_config.model_copy(update={"temperature": temperature}),
                result,
                metrics,
                summary,
                tracker,
            )
            write_report(run_dir, progress=progress)
            for split in prepared.evaluated:
                progress.info(
                    f"{split}: accuracy {metrics[split]['accuracy']:.3f}, macro F1 "
                    f"{metrics[split]['macro_f1']:.3f} (n={metrics[split]['n']})"
                )
    dist.barrier()
    dist.close()
    return Run(run_dir, config, metrics, result.history, prepared.checked.report, summary, rank=dist.rank)


@dataclass
class _Prepared:
    """The data after embedding and checking: per-split embeddings and labels."""

    ref: BackboneRef
    extractor: FeatureExtractor
    info: BackboneInfo
    checked: CheckedData
    classes: list[str]
    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    evaluated: list[str]  # splits with images among val / test
    embedding_summary: dict[str, Any]


@dataclass
class _Trained:
    """A trained model state with its history and evaluation probabilities."""

    model_config: ModelConfig
    state: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    head_summary: dict[str, Any] = field(default_factory=dict)
    finetune_summary: dict[str, Any] = field(default_factory=dict)
    balanced: bool = False


def _embed_and_check(
    config: TrainConfig, source: DataSource, ref: BackboneRef, dist: DistributedContext, progress: Progress
) -> _Prepared:
    """Embed the images through the cache (sharded over ranks), check what is usable."""
    extractor = FeatureExtractor(
        ref,
        cache_root(),
        device=config.device,
        batch_size=config.batch_size,
        workers=config.workers,
        max_pixels=config.max_image_pixels,
        import_while_computing=(*SKLEARN_MODULES, *REPORT_MODULES),
    )
    paths = [image.path for image in source.images]
    if dist.enabled:
        extractor.embed_files(dist.shard(paths), progress=progress)  # each rank fills the cache with its share
        dist.barrier()
    embedded = extractor.embed_files(paths, progress=progress)
    progress.info(
        f"embeddings: {embedded.cache_hits} cached, {embedded.computed} computed "
        f"({embedded.seconds:.1f} s, backbone {ref.arch})"
    )
    checked = check_data(source, embedded.content_hashes, embedded.failures)
    for line in summary_lines(checked.report):
        progress.info(line)
    _require_trainable(checked)
    splits = ("train", "val", "test")
    labels = {split: np.asarray(checked.labels(split), dtype=np.int64) for split in splits}
    return _Prepared(
        ref=ref,
        extractor=extractor,
        info=embedded.info,
        checked=checked,
        classes=source.classes,
        features={split: embedded.embeddings[checked.positions[split]] for split in splits},
        labels=labels,
        evaluated=[split for split in EVALUATED_SPLITS if len(labels[split])],
        embedding_summary={
            "cache_hits": embedded.cache_hits,
            "computed": embedded.computed,
            "seconds": round(embedded.seconds, 3),
            "corrupt_cache_entries": embedded.corrupt_cache_entries,
        },
    )


def _fit_linear(config: TrainConfig, prepared: _Prepared) -> _Trained:
    """Fit the head (C chosen on val); refit on train + val when a test split keeps evaluation honest.

    Validation figures always come from the head fitted on train alone.
    """
    features, labels, classes = prepared.features, prepared.labels, prepared.classes
    balanced = config.balance == "on" or (
        config.balance == "auto" and prepared.checked.report["imbalance"]["imbalanced"]
    )
    started = time.perf_counter()
    fit = fit_linear_head(
        features["train"],
        labels["train"],
        features["val"],
        labels["val"],
        len(classes),
        balanced=balanced,
        seed=config.seed,
    )
    probabilities = {split: fit.head.probabilities(features[split]) for split in prepared.evaluated}
    head = fit.head
    refit = config.mode == "linear" and config.refit and "test" in prepared.evaluated
    if refit:
        head = refit_linear_head(
            np.concatenate([features["train"], features["val"]]),
            np.concatenate([labels["train"], labels["val"]]),
            len(classes),
            fit.c,
            balanced=balanced,
            seed=config.seed,
        )
        probabilities["test"] = head.probabilities(features["test"])
    chosen = next(row for row in fit.candidates if row["c"] == fit.c)
    history = [
        history_row(
            0,
            "linear head",
            chosen["train_loss"],
            chosen["train_accuracy"],
            chosen["val_loss"],
            chosen["val_accuracy"],
            None,
            time.perf_counter() - started,
        )
    ]
    info = prepared.info
    model_config = ModelConfig(
        arch=info.arch,
        backbone=prepared.ref.describe(),
        classes=classes,
        preprocessing=info.preprocessing.to_dict(),
        embedding_dim=info.num_features,
        classifier_keys=info.classifier_keys,
        mode=config.mode,
    )
    state = linear_model_state(
        prepared.extractor.stored_weights(Progress(quiet=True)), info.classifier_keys, head.weight, head.bias
    )
    return _Trained(
        model_config,
        state,
        probabilities,
        history,
        balanced=balanced,
        head_summary={
            "c": fit.c,
            "balanced_loss": balanced,
            "refit_on_train_and_val": refit,
            "candidates": fit.candidates,
        },
    )


def _finetune(
    config: TrainConfig,
    prepared: _Prepared,
    linear: _Trained,
    run_dir: Path,
    resume: bool,
    dist: DistributedContext,
    tracker: Tracker,
    progress: Progress,
) -> _Trained:
    from tlearn.checkpoint import has_checkpoint
    from tlearn.finetune import LabelledFiles, finetune  # deferred: imports torch

    images = prepared.checked.source.images
    splits = {
        split: LabelledFiles([images[p].path for p in prepared.checked.positions[split]], prepared.labels[split])
        for split in ("train", *prepared.evaluated)
    }
    class_weights = _class_weights(prepared.labels["train"], len(prepared.classes)) if linear.balanced else None
    outcome = finetune(
        config=config,
        model_config=linear.model_config,
        initial_state=linear.state,
        splits=splits,
        class_weights=class_weights,
        run_dir=run_dir,
        resume=resume and has_checkpoint(run_dir),
        dist=dist,
        tracker=tracker,
        progress=progress,
    )
    # Epoch 0 stays the linear head's row (with its training figures); fine-tuning epochs follow.
    return _Trained(
        linear.model_config,
        outcome.state,
        outcome.probabilities,
        linear.history + outcome.history[1:],
        finetune_summary={
            "best_epoch": outcome.best_epoch,
            "images_per_second": round(outcome.images_per_second, 2),
            "peak_gpu_memory_mb": outcome.peak_gpu_memory_mb,
        },
    )


def _write_run(
    run_dir: Path,
    config: TrainConfig,
    prepared: _Prepared,
    model_config: ModelConfig,
    result: _Trained,
    metrics: dict[str, dict[str, Any]],
    summary: dict[str, Any],
    tracker: Tracker,
) -> None:
    """Save the model and every output file (rank 0 only), log final metrics, drop the checkpoint."""
    save_model(run_dir / "model", result.state, model_config.model_copy(update={"metrics": _headline(metrics)}))
    summary["model_bytes"] = (run_dir / "model" / "model.safetensors").stat().st_size
    _write_outputs(run_dir, config, prepared.checked, metrics, result.history, result.probabilities, summary)
    final_step = result.history[-1]["epoch"]
    tracker.log_params(config.model_dump(mode="json"))
    tracker.log_metrics(
        {
            f"{split}/{key}": values[key]
            for split, values in metrics.items()
            for key in ("accuracy", "balanced_accuracy", "macro_f1", "loss")
        },
        step=final_step,
    )
    tracker.log_model(run_dir / "model")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is complete; the model is the artefact


def _require_trainable(checked: CheckedData) -> None:
    """Every class needs training images and the validation split must not be empty."""
    train_counts = checked.counts("train")
    where = checked.source.root
    for name, count in train_counts.items():
        if count == 0:
            raise DataError(
                f"{where}: class {name!r} has no usable training images left after skipping bad files "
                "(see data_report.json)"
            )
    if not checked.positions["val"]:
        raise DataError(f"{where}: the validation split is empty; add images or give a larger val share (--split)")


def _class_weights(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (C * count): the weighting scikit-learn calls "balanced"."""
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    return (len(train_labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def _headline(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        split: {key: values[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "n")}
        for split, values in metrics.items()
    }


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
            rows.append(
                {
                    "path": relpath,
                    "split": split,
                    "label": classes[label],
                    "predicted": classes[int(row.argmax())],
                    "confidence": round(float(row.max()), 6),
                    **{f"p_{name}": round(float(value), 6) for name, value in zip(classes, row, strict=True)},
                }
            )
    atomic.write_csv(
        run_dir / "predictions.csv",
        rows,
        ["path", "split", "label", "predicted", "confidence", *[f"p_{name}" for name in classes]],
    )
