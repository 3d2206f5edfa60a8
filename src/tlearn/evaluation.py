"""`tlearn evaluate`: metrics of a saved model on a labelled folder, in the schema of a run's metrics.json."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlearn import atomic
from tlearn.discovery import discover_for_evaluation
from tlearn.errors import DataError
from tlearn.inference import InferenceEngine
from tlearn.metrics import classification_metrics
from tlearn.progress import Progress
from tlearn.report import write_report
from tlearn.run_records import EVALUATION_FILE


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


def evaluate_folder(
    classifier: InferenceEngine,
    data: str | Path,
    *,
    split: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    tta: bool = False,
    progress: Progress | None = None,
) -> Evaluation:
    """Evaluate `classifier` on a labelled folder; with `out`, write metrics.json, predictions.csv, the data
    report, evaluation.json (which model, how) and the report (report.html, figures/) there.

    A pre-split folder is evaluated on its test split (val when there is no test); a folder of class
    sub-folders as a whole, unless `split` names one of its hash splits. Unreadable files are skipped and
    listed, not fatal. `tta` averages the probabilities of each image and its mirror image.

    Raises:
        DataError: the folder holds a class the model does not know, or no usable image.
    """
    progress = progress or Progress()
    started = time.perf_counter()
    source, split_name = discover_for_evaluation(data, split=split)
    unknown = sorted({image.label for image in source.images} - set(classifier.classes))
    if unknown:
        raise DataError(
            f"{source.root}: class folder(s) {', '.join(unknown)} are not among the model's classes "
            f"({', '.join(classifier.classes)})"
        )
    index = {name: i for i, name in enumerate(classifier.classes)}
    paths = [image.path for image in source.images]
    probabilities, failures = classifier.predict_files_probabilities(
        paths, batch_size=batch_size, workers=workers, flip=tta, progress=progress
    )
    usable = [position for position in range(len(paths)) if position not in failures]
    if not usable:
        raise DataError(f"{source.root}: none of the {len(paths)} image(s) could be decoded")
    labels = np.asarray([index[source.images[p].label] for p in usable], dtype=np.int64)
    metrics = {split_name: classification_metrics(labels, probabilities[usable], classifier.classes)}
    predictions = [
        {
            "path": source.images[p].relpath,
            "label": source.images[p].label,
            "predicted": classifier.classes[int(probabilities[p].argmax())],
            "confidence": round(float(probabilities[p].max()), 6),
            **{
                f"p_{name}": round(float(value), 6)
                for name, value in zip(classifier.classes, probabilities[p], strict=True)
            },
        }
        for p in usable
    ]
    skipped = [{"path": source.images[p].relpath, "reason": reason} for p, reason in sorted(failures.items())]
    if out is not None:
        out = Path(out)
        atomic.write_json(out / "metrics.json", metrics)
        columns = ["path", "label", "predicted", "confidence", *[f"p_{name}" for name in classifier.classes]]
        atomic.write_csv(out / "predictions.csv", predictions, columns)
        counts = Counter(source.images[p].label for p in usable)
        atomic.write_json(
            out / "data_report.json",
            {
                "data": str(source.root),
                "split": split_name,
                "counts": {split_name: {name: counts.get(name, 0) for name in classifier.classes}},
                "skipped": skipped,
                "ignored": source.ignored,
            },
        )
        atomic.write_json(
            out / EVALUATION_FILE,
            {
                "model": str(classifier.path.resolve()) if classifier.path else None,
                "data": str(source.root),
                "split": split_name,
                "tta": tta,
                "seconds": round(time.perf_counter() - started, 3),
                "model_config": classifier.config.model_dump(mode="json"),
            },
        )
        write_report(out, progress=progress)
    return Evaluation(split_name, metrics, predictions, skipped)
