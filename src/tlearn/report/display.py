"""How a run shows itself in Jupyter: `run.report()` puts its metrics, curves and main figure inline.

The figures are the PNG files the run's report already wrote (`RUN/figures/*.png`), so nothing is drawn
twice and matplotlib is not imported. Outside Jupyter the same object prints as one line of headline
metrics with the path of the full `report.html`. A multi-label run is summed up by mAP and subset accuracy
rather than accuracy, a run with a reject rule also by the share of images it answered; a figure missing from
metrics.json shows as "–".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlearn.report.page import render_page
from tlearn.report.thumbnails import data_uri
from tlearn.runs.layout import RunFolder
from tlearn.runs.records import RunRecords, read_run

# The figures shown inline, those the run has (the rest, errors, calibration, ..., is in report.html).
INLINE_FIGURES = ("training_curves", "confusion_counts", "precision_recall", "accuracy_coverage")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _decimals(value: float) -> str:
    return f"{value:.3f}"


# (heading, metrics.json key, format) of the table's columns after split and images.
SINGLE_LABEL_COLUMNS = (
    ("accuracy", "accuracy", _percent),
    ("balanced accuracy", "balanced_accuracy", _percent),
    ("macro F1", "macro_f1", _decimals),
    ("ECE", "ece", _decimals),
)
MULTILABEL_COLUMNS = (
    ("mAP", "mAP", _decimals),
    ("subset accuracy", "subset_accuracy", _percent),
    ("micro F1", "micro_f1", _decimals),
    ("macro F1", "macro_f1", _decimals),
    ("Hamming loss", "hamming_loss", _decimals),
)
REJECT_COLUMNS = (  # from a split's `reject` entry
    ("answered", "coverage", _percent),
    ("accuracy answered", "selective_accuracy", _percent),
)
# (name in the one-line summary, metrics.json key) of the headline figures.
SINGLE_LABEL_HEADLINE = (("accuracy", "accuracy"), ("macro F1", "macro_f1"))
MULTILABEL_HEADLINE = (
    ("mAP", "mAP"),
    ("subset accuracy", "subset_accuracy"),
    ("micro F1", "micro_f1"),
    ("macro F1", "macro_f1"),
)
# By task name (`tlearn.evaluation.tasks`): the table's columns and the one-line summary's figures.
TASK_COLUMNS = {"multiclass": SINGLE_LABEL_COLUMNS, "multilabel": MULTILABEL_COLUMNS}
TASK_HEADLINE = {"multiclass": SINGLE_LABEL_HEADLINE, "multilabel": MULTILABEL_HEADLINE}


@dataclass(frozen=True, repr=False)
class RunReport:
    """The report of a run or evaluation folder, displayed inline by Jupyter and as one line elsewhere.

    Example:
        >>> run = tlearn.train("data/", out="runs/first")  # doctest: +SKIP
        >>> run.report()  # doctest: +SKIP
        test: accuracy 0.960, macro F1 0.959 (n=50); full report: runs/first/report.html
    """

    folder: Path

    @property
    def path(self) -> Path:
        """The full, self-contained report (`report.html`)."""
        return RunFolder(self.folder).report

    def _repr_html_(self) -> str:
        records = read_run(self.folder)
        figures = {}
        for name in INLINE_FIGURES:
            png = RunFolder(self.folder).figure(name)
            if png.is_file():
                figures[name] = data_uri(png.read_bytes(), "image/png")
        return render_page(
            "display.html",
            records=records,
            table=metrics_table(records),
            figures=figures,
            report=self.path,
            title=self.folder.resolve().name,
        )

    def __repr__(self) -> str:
        records = read_run(self.folder)
        headline = records.metrics[records.split]
        names = TASK_HEADLINE[records.task.name]
        figures = [f"{name} {_text(headline.get(key), _decimals)}" for name, key in names]
        reject = headline.get("reject")
        if reject:
            figures.append(
                f"answered {_text(reject.get('coverage'), _percent)} "
                f"at accuracy {_text(reject.get('selective_accuracy'), _decimals)}"
            )
        return f"{records.split}: {', '.join(figures)} (n={headline.get('n', '?')}); full report: {self.path}"


def metrics_table(records: RunRecords) -> dict[str, Any]:
    """Every evaluated split's headline figures as text: `headings` and `rows` (split, images, figures...)."""
    columns = TASK_COLUMNS[records.task.name]
    with_reject = any(values.get("reject") for values in records.metrics.values())
    rows = []
    for split, values in records.metrics.items():
        cells = [_text(values.get(key), show) for _, key, show in columns]
        if with_reject:
            reject = values.get("reject") or {}
            cells += [_text(reject.get(key), show) for _, key, show in REJECT_COLUMNS]
        judged = " (judged on)" if split == records.split else ""
        rows.append([f"{split}{judged}", _text(values.get("n"), str), *cells])
    headings = ["split", "images", *(name for name, _, _ in columns)]
    if with_reject:
        headings += [name for name, _, _ in REJECT_COLUMNS]
    return {"headings": headings, "rows": rows}


def _text(value: Any, show: Callable[[Any], str]) -> str:
    return "–" if value is None else show(value)
