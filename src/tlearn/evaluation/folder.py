"""Evaluating a saved model on a labelled folder, and writing the outcome in the run-folder format.

`evaluate_folder` computes (any engine: it only needs `predict_files_probabilities`); `write_evaluation`
writes metrics.json, predictions.csv, data_report.json and evaluation.json, the files the report and
`compare` read. `tlearn.evaluate` composes the two with the report.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlearn.data.checks import left_out_line
from tlearn.data.discovery import DataSource, discover_for_evaluation
from tlearn.engines.options import PredictOptions
from tlearn.errors import DataError
from tlearn.evaluation.rejection import selective_metrics
from tlearn.runs.layout import RunFolder, prediction_columns
from tlearn.runs.summary import EvaluationSummary, write_summary
from tlearn.util import atomic
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from tlearn.engines.base import InferenceEngine


@dataclass
class Evaluation:
    """Metrics of one split and the per-image outcome.

    Example:
        >>> evaluation = tlearn.evaluate("runs/ants", "holdout/")  # doctest: +SKIP
        >>> evaluation.metrics[evaluation.split]["accuracy"], len(evaluation.predictions)  # doctest: +SKIP
        (0.95, 153)
    """

    split: str
    metrics: dict[str, dict[str, Any]]  # {split: metrics}
    predictions: list[dict[str, Any]]  # path, label, predicted, confidence, probabilities
    skipped: list[dict[str, str]]
    source: DataSource | None = field(default=None, repr=False)
    tta: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class EvaluationSettings:
    """How to evaluate a folder (the options of `tlearn evaluate`).

    Attributes:
        split: all, train, val or test; None: the test split of a pre-split folder (val without one), a
            folder of classes as a whole.
        tta: flip test-time augmentation (each image averaged with its mirror image).
        follow_links: follow symbolic links leading outside the folder (else listed and skipped).
        batch_size: images per model call.
        workers: decoding processes (None: from the core count).
    """

    split: str | None = None
    tta: bool = False
    follow_links: bool = False
    batch_size: int = 32
    workers: int | None = None


def evaluate_folder(
    engine: InferenceEngine,
    data: str | Path,
    settings: EvaluationSettings = EvaluationSettings(),
    *,
    progress: Progress | None = None,
) -> Evaluation:
    """Evaluate `engine` on a labelled folder.

    A pre-split folder is evaluated on its test split (val when there is no test); a folder of class
    sub-folders as a whole, unless `settings.split` names one of its hash splits. Unreadable files are
    skipped and listed, not fatal.

    Raises:
        DataError: the folder holds a class the model does not know, or no usable image.
    """
    progress = progress or Progress()
    started = time.perf_counter()
    task = engine.config.task_type
    # Label sets are read as they are; a single-label model is judged on each image's first label.
    source, split_name = discover_for_evaluation(
        data, split=settings.split, fractions=engine.config.split_fractions, follow_links=settings.follow_links
    )
    if source.problems:
        progress.info(left_out_line(source.label_file, source.problems))
    unknown = sorted({name for image in source.images for name in image.labels} - set(engine.classes))
    if unknown:
        raise DataError(
            f"{source.root}: class folder(s) {', '.join(unknown)} are not among the model's classes "
            f"({', '.join(engine.classes)})"
        )
    index = {name: i for i, name in enumerate(engine.classes)}
    paths = [image.path for image in source.images]
    options = PredictOptions(batch_size=settings.batch_size, workers=settings.workers, flip=settings.tta)
    probabilities, scores, failures = engine.predict_files_scored(paths, options, progress=progress)
    usable = [position for position in range(len(paths)) if position not in failures]
    if not usable:
        raise DataError(f"{source.root}: none of the {len(paths)} image(s) could be decoded")
    relpaths = [source.images[p].relpath for p in usable]
    targets = task.targets(
        [tuple(index[name] for name in source.images[p].labels) for p in usable], len(engine.classes)
    )
    thresholds = engine.config.thresholds
    metrics = {split_name: task.metrics(targets, probabilities[usable], engine.classes, thresholds)}
    predictions = task.prediction_rows(relpaths, targets, probabilities[usable], engine.classes, thresholds)
    rule = engine.config.reject
    if rule is not None and scores is not None:  # coverage and accuracy of the answers the rule lets through
        correct = task.right(probabilities[usable], targets, thresholds)
        metrics[split_name]["reject"] = selective_metrics(scores[usable], correct, rule.threshold, rule.score)
    skipped = [{"path": source.images[p].relpath, "reason": reason} for p, reason in sorted(failures.items())]
    seconds = time.perf_counter() - started
    return Evaluation(split_name, metrics, predictions, skipped, source, tta=settings.tta, seconds=seconds)


def write_evaluation(evaluation: Evaluation, out: Path, engine: InferenceEngine) -> None:
    """Write an evaluation's files into `out` (metrics, predictions, data report, evaluation.json)."""
    files = RunFolder(out)
    classes = engine.classes
    atomic.write_json(files.metrics, evaluation.metrics)
    atomic.write_csv(files.predictions, evaluation.predictions, prediction_columns(classes, with_split=False))
    task = engine.config.task_type
    counts = Counter(name for row in evaluation.predictions for name in task.label_names(row["label"]))
    root = evaluation.source.root if evaluation.source else None
    atomic.write_json(
        files.data_report,
        {
            "data": str(root),
            "split": evaluation.split,
            "counts": {evaluation.split: {name: counts.get(name, 0) for name in classes}},
            "skipped": evaluation.skipped,
            "ignored": evaluation.source.ignored if evaluation.source else [],
            "label_file_problems": evaluation.source.problems if evaluation.source else [],
        },
    )
    write_summary(
        files.evaluation,
        EvaluationSummary(
            model=str(engine.path.resolve()) if engine.path else None,
            data=str(root),
            split=evaluation.split,
            tta=evaluation.tta,
            seconds=round(evaluation.seconds, 3),
            config=engine.config.model_dump(mode="json"),
        ),
    )
