"""`tlearn.train`'s orchestration: from a data folder to a run folder holding a trained, evaluated model.

The steps live in their folders; this module only composes them: discover the images (`data.discovery`),
embed them with the frozen backbone through the cache (`backbones.features`), check what is usable
(`data.checks`), fit the linear head on the embeddings (`training.head`), optionally fine-tune
(`training.finetune`), measure (`evaluation.metrics`) and write the run folder (`runs`), then the report
(`report`). Torch is only imported when a step needs it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlearn import __version__
from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import BackboneInfo, BackboneRef, resolve_backbone
from tlearn.config import TrainConfig
from tlearn.data.checks import CheckedData, check_data, summary_lines
from tlearn.data.discovery import DataSource, discover
from tlearn.engines.imagenet import imagenet_answers
from tlearn.errors import BackboneError, DataError
from tlearn.evaluation.calibration import apply_temperature, fit_temperature
from tlearn.evaluation.metrics import classification_metrics
from tlearn.report.display import RunReport
from tlearn.report.page import write_report
from tlearn.runs.layout import (
    HISTORY_COLUMNS,
    HistoryRow,
    RunFolder,
    prediction_columns,
    prediction_rows,
    sample_rows,
)
from tlearn.runs.lifecycle import OutputFolder
from tlearn.runs.model_dir import WEIGHTS_FILE, ModelConfig, linear_model_state, save_model
from tlearn.training.context import TrainingContext
from tlearn.training.distributed import DistributedContext
from tlearn.training.head import fit_head, select_c
from tlearn.training.tracking import Tracker
from tlearn.util import atomic
from tlearn.util.background import import_in_background
from tlearn.util.numeric import cross_entropy
from tlearn.util.progress import Progress

EVALUATED_SPLITS = ("val", "test")
# Needed after the embeddings (the head, the metrics, the report): imported while the backbone computes.
MODULES_NEEDED_LATER = ("sklearn.linear_model", "sklearn.metrics", "tlearn.report.figures", "jinja2")
BEFORE_AFTER_SAMPLES = 8  # sample images the report shows with the original ImageNet model's answers
IMAGENET_TOP = 3


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
        return RunFolder(self.path).model

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
        from tlearn.backbones.devices import resolve_device  # deferred: imports torch; fail before any work

        resolve_device(config.device)
    dist = DistributedContext.from_environment(config.device)
    progress = (progress or Progress()) if dist.is_main else Progress(quiet=True)
    run = RunFolder(Path(out).expanduser())
    # Data folder and backbone are checked before --out is created, so a mistyped command leaves nothing behind.
    source = discover(config.data, split_fractions=config.split)
    ref = resolve_backbone(config.backbone, config.weights)
    folder = (
        OutputFolder.open(run.root, kind="train", overwrite=overwrite, resume=resume, data=source.root)
        if dist.is_main
        else contextlib.nullcontext()
    )
    with folder:
        if dist.is_main:
            atomic.write_text(run.config, config.to_yaml())  # first, so a crashed run can resume
        dist.barrier()
        tracker = Tracker(
            run.tracking if dist.is_main else None,
            mlflow_uri=config.mlflow if dist.is_main else None,
            run_name=run.root.name,
        )
        with tracker:
            context = TrainingContext(config, run, resume, dist, tracker, progress)
            metrics, result, prepared, summary = _train_and_measure(context, source, ref)
            summary["seconds"] = round(time.perf_counter() - started, 3)
            if dist.is_main:
                _write_run(context, prepared, result, metrics, summary)
                write_report(run.root, progress=progress)
                for split in prepared.evaluated:
                    progress.info(
                        f"{split}: accuracy {metrics[split]['accuracy']:.3f}, macro F1 "
                        f"{metrics[split]['macro_f1']:.3f} (n={metrics[split]['n']})"
                    )
    dist.barrier()
    dist.close()
    return Run(run.root, config, metrics, result.history, prepared.checked.report, summary, rank=dist.rank)


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


def _train_and_measure(
    context: TrainingContext, source: DataSource, ref: BackboneRef
) -> tuple[dict[str, dict[str, Any]], _Trained, _Prepared, dict[str, Any]]:
    """Embed, fit the head, fine-tune when asked, calibrate; returns metrics, model, data and the summary."""
    config, progress = context.config, context.progress
    prepared = _embed_and_check(context, source, ref)
    linear = _fit_linear(config, prepared)
    result = _finetune(context, prepared, linear) if config.mode == "finetune" else linear
    temperature = 1.0
    if config.calibrate:  # temperature scaling: fitted on val, stored in the model, applied to every split
        temperature = fit_temperature(result.probabilities["val"], prepared.labels["val"])
        result.probabilities = {
            split: apply_temperature(values, temperature) for split, values in result.probabilities.items()
        }
        progress.info(f"calibration: temperature {temperature:.3f} fitted on val (1 when val has no errors)")
    result.model_config = result.model_config.model_copy(update={"temperature": temperature})
    metrics = {
        split: classification_metrics(prepared.labels[split], result.probabilities[split], prepared.classes)
        for split in prepared.evaluated
    }
    summary = {
        "tlearn_version": __version__,
        "mode": config.mode,
        "backbone": prepared.ref.describe(),
        "classes": prepared.classes,
        "world_size": context.dist.world_size,
        "embedding": prepared.embedding_summary,
        "head": linear.head_summary,
        "finetune": result.finetune_summary,
    }
    return metrics, result, prepared, summary


def _embed_and_check(context: TrainingContext, source: DataSource, ref: BackboneRef) -> _Prepared:
    """Embed the images through the cache (sharded over ranks), check what is usable."""
    config, dist, progress = context.config, context.dist, context.progress
    extractor = FeatureExtractor(
        ref,
        cache_root(),
        device=config.device,
        batch_size=config.batch_size,
        workers=config.workers,
        max_pixels=config.max_image_pixels,
        on_compute_start=lambda: import_in_background(MODULES_NEEDED_LATER),
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
    """Choose C by cross-validation over train + val; the validation figures come from a head fitted on train
    alone, the test figures (and the saved head, in linear mode) from one fitted on train + val."""
    features, labels, classes = prepared.features, prepared.labels, prepared.classes
    balanced = config.balance == "on" or (
        config.balance == "auto" and prepared.checked.report["imbalance"]["imbalanced"]
    )
    started = time.perf_counter()
    dev_x = np.concatenate([features["train"], features["val"]])
    dev_y = np.concatenate([labels["train"], labels["val"]])
    selection = select_c(dev_x, dev_y, len(classes), balanced=balanced, seed=config.seed)
    train_head = fit_head(features["train"], labels["train"], len(classes), selection.c, balanced=balanced)
    probabilities = {split: train_head.probabilities(features[split]) for split in prepared.evaluated}
    head = train_head
    refit = config.mode == "linear" and config.refit
    if refit:
        head = fit_head(dev_x, dev_y, len(classes), selection.c, balanced=balanced, seed=config.seed)
        if "test" in prepared.evaluated:
            probabilities["test"] = head.probabilities(features["test"])
    train_probabilities = train_head.probabilities(features["train"])
    history = [
        HistoryRow(
            0,
            "linear head",
            cross_entropy(probabilities["val"], labels["val"]),
            float((probabilities["val"].argmax(1) == labels["val"]).mean()),
            seconds=time.perf_counter() - started,
            train_loss=cross_entropy(train_probabilities, labels["train"]),
            train_accuracy=float((train_probabilities.argmax(1) == labels["train"]).mean()),
        ).to_dict()
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
            "c": selection.c,
            "folds": selection.folds,
            "balanced_loss": balanced,
            "refit_on_train_and_val": refit,
            "candidates": selection.candidates,
        },
    )


def _finetune(context: TrainingContext, prepared: _Prepared, linear: _Trained) -> _Trained:
    from tlearn.training.checkpoint import has_checkpoint  # deferred: imports torch
    from tlearn.training.finetune import LabelledFiles, finetune

    images = prepared.checked.source.images
    splits = {
        split: LabelledFiles([images[p].path for p in prepared.checked.positions[split]], prepared.labels[split])
        for split in ("train", *prepared.evaluated)
    }
    class_weights = _class_weights(prepared.labels["train"], len(prepared.classes)) if linear.balanced else None
    resumable = context.resume and has_checkpoint(context.run.root)
    outcome = finetune(
        TrainingContext(context.config, context.run, resumable, context.dist, context.tracker, context.progress),
        linear.model_config,
        linear.state,
        splits,
        class_weights,
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
    context: TrainingContext,
    prepared: _Prepared,
    result: _Trained,
    metrics: dict[str, dict[str, Any]],
    summary: dict[str, Any],
) -> None:
    """Save the model and every output file (rank 0 only), log final metrics, drop the checkpoint."""
    run, config, tracker = context.run, context.config, context.tracker
    save_model(run.model, result.state, result.model_config.model_copy(update={"metrics": _headline(metrics)}))
    summary["model_bytes"] = (run.model / WEIGHTS_FILE).stat().st_size
    checked, classes = prepared.checked, prepared.classes
    atomic.write_json(run.metrics, metrics)
    atomic.write_csv(run.history, result.history, HISTORY_COLUMNS)
    atomic.write_json(run.data_report, checked.report)
    atomic.write_json(run.splits, {split: checked.relpaths(split) for split in ("train", "val", "test")})
    atomic.write_text(run.config, config.to_yaml())
    atomic.write_json(run.summary, summary)
    rows = {
        split: prediction_rows(
            checked.relpaths(split), checked.labels(split), result.probabilities[split], classes, split=split
        )
        for split in result.probabilities
    }
    atomic.write_csv(
        run.predictions,
        [row for split_rows in rows.values() for row in split_rows],
        prediction_columns(classes, with_split=True),
    )
    atomic.write_json(run.imagenet, _imagenet_samples(prepared, rows))
    tracker.log_params(config.model_dump(mode="json"))
    tracker.log_metrics(
        {
            f"{split}/{key}": values[key]
            for split, values in metrics.items()
            for key in ("accuracy", "balanced_accuracy", "macro_f1", "loss")
        },
        step=result.history[-1]["epoch"],
    )
    tracker.log_model(run.model)
    shutil.rmtree(run.checkpoints, ignore_errors=True)  # the run is complete; the model is the artefact


def _imagenet_samples(prepared: _Prepared, rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The original ImageNet model's answers for the report's sample images, from the embeddings in hand."""
    split = "test" if "test" in rows else "val"
    samples = sample_rows(rows[split], BEFORE_AFTER_SAMPLES)
    position = {relpath: i for i, relpath in enumerate(prepared.checked.relpaths(split))}
    embeddings = prepared.features[split][[position[row["path"]] for row in samples]]
    try:
        answers = imagenet_answers(
            embeddings, prepared.info, prepared.extractor.stored_weights(Progress(quiet=True)), k=IMAGENET_TOP
        )
    except BackboneError as error:
        return {"reason": str(error)}
    return {"answers": {row["path"]: answer for row, answer in zip(samples, answers, strict=True)}}


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
