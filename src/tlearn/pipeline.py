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
from tlearn.audits.findings import AuditSettings, ImageTable, audit_embeddings
from tlearn.audits.review import apply_review, review_rows, write_review
from tlearn.backbones.cache import cache_root
from tlearn.backbones.registry import BackboneRef, resolve_backbones
from tlearn.backbones.result_cache import ResultCache, remembered
from tlearn.config import TrainConfig
from tlearn.data.discovery import DataSource, discover
from tlearn.engines.imagenet import Answer, imagenet_answers, imagenet_samples
from tlearn.engines.loading import check_engine
from tlearn.errors import DataError
from tlearn.evaluation.calibration import apply_temperature
from tlearn.report.display import RunReport
from tlearn.report.page import write_report
from tlearn.runs.layout import HISTORY_COLUMNS, RunFolder, prediction_columns, report_split
from tlearn.runs.lifecycle import OutputFolder
from tlearn.runs.model_dir import WEIGHTS_FILE, save_model
from tlearn.runs.summary import RunSummary, SelectionRecord, write_summary
from tlearn.training.candidates import (
    Candidate,
    PreparedData,
    final_fit,
    finetune_candidate,
    guard_resumed_data,
    linear_candidate,
    why_not_finetune,
)
from tlearn.training.context import TrainingContext
from tlearn.training.distributed import DistributedContext
from tlearn.training.prepare import prepare
from tlearn.training.rejection import fit_reject
from tlearn.training.selection import choose
from tlearn.training.tracking import Tracker
from tlearn.util import atomic
from tlearn.util.progress import Progress

AUDIT_LIMIT = 5000  # images a training run audits itself (the near-duplicate search grows with their square)
IMAGENET_TOP = 3


@dataclass
class Run:
    """A finished training run: its metrics and history in memory, everything else under `path`.

    Example:
        >>> run = tlearn.train("data/", out="runs/first")  # doctest: +SKIP
        >>> run.metrics["test"]["accuracy"], run.summary.model, run.history  # doctest: +SKIP
        >>> run.report()  # doctest: +SKIP
    """

    path: Path
    config: TrainConfig
    metrics: dict[str, dict[str, Any]]
    history_rows: list[dict[str, Any]]
    data_report: dict[str, Any]
    summary: RunSummary = field(default_factory=RunSummary)
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
    source = discover(
        config.data,
        split_fractions=config.split,
        follow_links=config.follow_links,
        label_sep=config.label_sep,
        task=config.task,
    )
    review = None
    if config.review is not None:
        source, review = apply_review(source, config.review)
        for line in review["errors"]:
            progress.info(f"review: {line}")
    backbones = resolve_backbones(config.backbone, config.weights)
    if config.teacher is not None:
        check_engine(config.teacher, device=config.device)  # a missing or foreign teacher: before any work
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
            wandb_project=config.wandb if dist.is_main else None,
            run_name=run.root.name,
        )
        with tracker, contextlib.closing(ResultCache(cache_root())) as results:
            context = TrainingContext(config, run, resume, dist, tracker, progress, results)
            metrics, result, prepared, summary = _train_and_measure(context, source, backbones)
            if review is not None:
                prepared.checked.report["review"] = review
            summary = summary.model_copy(update={"seconds": round(time.perf_counter() - started, 3)})
            if dist.is_main:
                summary = _write_run(context, prepared, result, metrics, summary)
                write_report(run.root, progress=progress)  # the figures themselves: the caller's to print
    dist.barrier()
    dist.close()
    return Run(run.root, config, metrics, result.history, prepared.checked.report, summary, rank=dist.rank)


def _train_and_measure(
    context: TrainingContext, source: DataSource, backbones: list[BackboneRef]
) -> tuple[dict[str, dict[str, Any]], Candidate, PreparedData, RunSummary]:
    """Embed (choosing the backbone among `backbones`), fit the linear head, fine-tune when the mode asks for it,
    keep the better, fit the final model, calibrate; returns metrics, model, data and the run summary."""
    config, progress = context.config, context.progress
    ready = prepare(context, source, backbones)
    prepared = ready.data
    task = prepared.task
    linear = linear_candidate(config, prepared)
    result, outcome = _pick_candidate(context, ready.finetune_data, linear)
    result = final_fit(context, linear, result)
    temperature = 1.0
    if config.calibrate and task.calibration_note:
        progress.info(f"calibration: skipped ({task.calibration_note})")
    elif config.calibrate:  # temperature scaling: fitted on val, stored in the model, applied to every split
        temperature = task.temperature(result.probabilities["val"], prepared.targets["val"])
        result.probabilities = {
            split: apply_temperature(values, temperature) for split, values in result.probabilities.items()
        }
        progress.info(f"calibration: temperature {temperature:.3f} fitted on val (1 when val has no errors)")
    result.model_config = result.model_config.model_copy(update={"temperature": temperature})
    metrics = _metrics(prepared, result)
    if config.reject != "off":
        rejection = fit_reject(context, prepared, result)
        result.model_config = result.model_config.model_copy(update={"reject": rejection.rule})
        result.extra_files = rejection.files
        for split, block in rejection.metrics.items():
            metrics[split]["reject"] = block
        progress.info(rejection.summary_line)
    summary = RunSummary(
        tlearn_version=__version__,
        task=task.name,
        mode=config.mode,
        model=result.model_config.mode,
        final_fit=result.final_fit,
        backbone=(result.data or prepared).ref.describe(),
        backbone_trials=ready.choice.trials if ready.choice else [],
        backbone_choice=ready.choice.reason if ready.choice else None,
        classes=prepared.classes,
        world_size=context.dist.world_size,
        embedding=prepared.embedding,
        head=linear.head_record,
        finetune=(result.finetune_record or outcome.tuned.finetune_record) if outcome.tuned else None,  # with refits
        finetune_skipped=outcome.skipped,
        selection=outcome.selection,
        teacher=ready.finetune_data.teacher.record if ready.finetune_data.teacher is not None else None,
    )
    return metrics, result, prepared, summary


def _metrics(prepared: PreparedData, result: Candidate) -> dict[str, dict[str, Any]]:
    """metrics.json: every evaluated set's figures ("cv": the linear head's cross-validation over train+val)."""
    names = [name for name in ("val", "test", "cv") if name in result.probabilities]
    thresholds = result.model_config.thresholds
    task, classes = prepared.task, prepared.classes

    def measured(name: str) -> dict[str, Any]:
        answers, probabilities = prepared.answers(*prepared.covered(name)), result.probabilities[name]
        inputs = (answers, probabilities, classes, thresholds)
        return remembered(prepared.results, "metrics", lambda: task.metrics(*inputs), task.name, *inputs)

    return {name: measured(name) for name in names}


@dataclass
class _Outcome:
    """What the choice between the candidates found: the fine-tuned candidate (None when fine-tuning did not
    run, with the reason), and the comparison on validation."""

    tuned: Candidate | None = None
    skipped: str | None = None
    selection: SelectionRecord | None = None


def _pick_candidate(context: TrainingContext, prepared: PreparedData, linear: Candidate) -> tuple[Candidate, _Outcome]:
    """The linear head, or the fine-tuned network when the mode asks for it and (in auto mode) it does better
    on the same validation images; returns the kept candidate and what the choice found."""
    config, progress = context.config, context.progress
    skip = why_not_finetune(config, linear)
    if skip:
        progress.info(f"fine-tuning skipped: {skip}")
        return linear, _Outcome(skipped=skip)
    guard_resumed_data(context, prepared)
    if config.teacher is not None:
        from tlearn.training.teacher import consult_teacher  # deferred: loads a model

        prepared.teacher = consult_teacher(config, prepared, progress)
    tuned = finetune_candidate(context, prepared, linear)
    choice = choose(
        prepared.task,
        linear.probabilities["val"],
        tuned.probabilities["val"],
        prepared.targets["val"],
        (linear.model_config.thresholds, tuned.model_config.thresholds),
        improved=tuned.finetune_record is not None and tuned.finetune_record.best_epoch > 0,
    )
    kept = tuned if config.mode == "finetune" or choice.chosen == "finetune" else linear
    if kept is tuned and choice.chosen == "linear":
        progress.info(f"kept the fine-tuned network because of --mode finetune; in auto mode: {choice.reason}")
    else:
        progress.info(f"kept the {'fine-tuned network' if kept is tuned else 'linear head'}: {choice.reason}")
    selection = choice.model_copy(update={"kept": "finetune" if kept is tuned else "linear"})
    return kept, _Outcome(tuned=tuned, selection=selection)


def _write_run(
    context: TrainingContext,
    prepared: PreparedData,
    result: Candidate,
    metrics: dict[str, dict[str, Any]],
    summary: RunSummary,
) -> RunSummary:
    """Save the model and every output file (rank 0 only), log final metrics, drop the checkpoint; returns the
    summary as written (with the model's size)."""
    run, config, tracker = context.run, context.config, context.tracker
    save_model(
        run.model,
        result.state,
        result.model_config.model_copy(update={"metrics": _headline(metrics)}),
        extra_files=result.extra_files,
    )
    summary = summary.model_copy(update={"model_bytes": (run.model / WEIGHTS_FILE).stat().st_size})
    checked, classes = prepared.checked, prepared.classes
    atomic.write_json(run.metrics, metrics)
    atomic.write_csv(run.history, result.history, HISTORY_COLUMNS)
    atomic.write_json(run.data_report, checked.report)
    atomic.write_json(run.splits, {split: checked.relpaths(split) for split in ("train", "val", "test")})
    atomic.write_text(run.config, config.to_yaml())
    write_summary(run.summary, summary)
    rows = {name: _prediction_rows(prepared, result, name) for name in result.probabilities}
    atomic.write_csv(
        run.predictions,
        [row for split_rows in rows.values() for row in split_rows],
        prediction_columns(classes, with_split=True),
    )
    atomic.write_json(run.imagenet, _imagenet_samples(result.data or prepared, rows))
    audit = _audit(prepared, summary)
    atomic.write_json(run.audit, audit)
    if "summary" in audit:
        write_review(run.review, review_rows(audit))
    tracker.log_params(config.model_dump(mode="json"))
    tracker.log_metrics(
        {
            f"{split}/{key}": values[key]
            for split, values in metrics.items()
            for key in ("accuracy", "balanced_accuracy", "macro_f1", "loss", "mAP", "micro_f1", "hamming_loss")
            if key in values
        },
        step=result.history[-1]["epoch"],
    )
    tracker.log_model(run.model)
    shutil.rmtree(run.checkpoints, ignore_errors=True)  # the run is complete; the model is the artefact
    return summary


def _audit(prepared: PreparedData, summary: RunSummary) -> dict[str, Any]:
    """The data audit of every usable image (likely label errors, near-duplicates, outliers), from the
    embeddings in hand, with the L2 strength the linear head chose (no second search); folders beyond
    AUDIT_LIMIT images are left to `tlearn audit`."""
    splits = [split for split in ("train", "val", "test") if len(prepared.targets[split])]
    images = sum(len(prepared.targets[split]) for split in splits)
    if images > AUDIT_LIMIT:
        return {"reason": f"{images} images: run `tlearn audit` for this folder (training audits up to {AUDIT_LIMIT})"}
    checked = prepared.checked
    table = ImageTable(
        targets=np.concatenate([prepared.targets[split] for split in splits]),
        classes=prepared.classes,
        relpaths=[relpath for split in splits for relpath in checked.relpaths(split)],
        splits=[split for split in splits for _ in checked.relpaths(split)],
        content_hashes=[checked.content_hashes[p] for split in splits for p in checked.positions[split]],
        task_name=prepared.task.name,
    )
    embeddings = prepared.stack(*splits)[0]
    settings = AuditSettings(c=summary.head.c) if summary.head else AuditSettings()
    try:
        # The findings are a pure function of these inputs: a warm run reads them back.
        compute = lambda: audit_embeddings(embeddings, table, settings).payload  # noqa: E731
        payload = remembered(prepared.results, "audit", compute, embeddings, table, settings)
    except DataError as error:
        return {"reason": str(error)}
    return {**payload, "data": str(checked.source.root), "backbone": prepared.ref.describe()}


def _prediction_rows(prepared: PreparedData, result: Candidate, name: str) -> list[dict[str, Any]]:
    """predictions.csv rows of one evaluated set (label sets for a multi-label model)."""
    return prepared.task.prediction_rows(
        prepared.relpaths(name),
        prepared.answers(*prepared.covered(name)),
        result.probabilities[name],
        prepared.classes,
        result.model_config.thresholds,
        split=name,
    )


def _imagenet_samples(prepared: PreparedData, rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The original ImageNet model's answers for the report's sample images, from the embeddings in hand."""
    name = report_split(list(rows))
    position = {relpath: i for i, relpath in enumerate(prepared.relpaths(name))}
    features = prepared.stack(*prepared.covered(name))[0]

    def answers_for(paths: list[str]) -> list[Answer]:
        weights = prepared.extractor.stored_weights(Progress(quiet=True))
        return imagenet_answers(features[[position[path] for path in paths]], prepared.info, weights, k=IMAGENET_TOP)

    return imagenet_samples(rows[name], answers_for)


def _headline(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "mAP", "micro_f1", "n")
    return {split: {key: values[key] for key in keys if key in values} for split, values in metrics.items()}
