"""`tlearn compare`: runs side by side, so "linear vs finetune" or "lite0 vs resnet50" is one command.

Each folder is read back from its files (`tlearn.runs.records`): a training run, or a `tlearn evaluate`
folder, whose time and epochs come from the training run that holds its model. The table prints as
Markdown (aligned, so it also reads well in a terminal) and can be written as Markdown or HTML. Multi-label
runs add their mAP, and their accuracy is the subset accuracy (headed so when every run is multi-label);
runs with a reject rule add the share of images they answered; a figure a run lacks shows as "–".

Figures are only comparable on the same images. Each row names the data it was judged on (the folder, the
split, the image count: `data_key`) and its accuracy carries its 95% Wilson interval. A run is marked best (green
in the HTML page, `best_cells`) only against runs judged on the same data, and only where its interval lies above
every other's: a 4-image run beside a 153-image run, or two runs whose intervals overlap, get no mark.
`comparison_notes` says so in words under the table.

Run folders and backbone names are the user's text: control characters are shown escaped (they would rewrite
the terminal) and `|` is escaped in Markdown (it would split a cell); the HTML page escapes through Jinja.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tlearn.errors import TlearnError
from tlearn.runs.layout import RunFolder
from tlearn.runs.records import RunRecords, read_run
from tlearn.util import atomic
from tlearn.util.text import printable

COLUMNS = (  # every column a table may have, in order; `table_columns` keeps those the runs fill
    "run",
    "backbone",
    "mode",
    "epochs",
    "train time",
    "data",
    "split",
    "images",
    "mAP",
    "accuracy",
    "macro F1",
    "ECE",
    "answered",
    "model size",
    "images/s",
    "latency",
)
NUMERIC = {
    "epochs",
    "train time",
    "images",
    "mAP",
    "accuracy",
    "subset accuracy",
    "macro F1",
    "ECE",
    "answered",
    "model size",
    "images/s",
    "latency",
}
OPTIONAL = ("mAP", "ECE", "answered", "images/s", "latency")  # shown only when at least one run has the figure
# By task name: the accuracy column's heading when every run shares the task, and what the mode column adds.
ACCURACY_HEADINGS = {"multiclass": "accuracy", "multilabel": "subset accuracy"}
TASK_MODE_NOTES = {"multiclass": "", "multilabel": " + multi-label"}


@dataclass
class RunSummary:
    """One row of the comparison; None where the run has no such figure (a multi-label run has no ECE, a
    single-label run no mAP, a run without a reject rule answers every image)."""

    run: str  # the folder as given
    backbone: str
    mode: str  # linear or finetune, with "+ calibrated" / "+ TTA" / "+ multi-label" when they apply
    epochs: int | None  # fine-tuning epochs run (0 for a linear head)
    seconds: float | None  # training wall time
    split: str  # the split judged on
    images: int | None
    accuracy: float | None  # a multi-label run's subset accuracy (the whole label set right)
    macro_f1: float | None
    ece: float | None
    model_bytes: int | None
    task: str = "multiclass"  # the task's name (`tlearn.evaluation.tasks`)
    mean_ap: float | None = None  # multi-label runs: mean average precision
    coverage: float | None = None  # runs with a reject rule: the share of images answered
    data: str = "?"  # the folder the figures were measured on (a training run's data, an evaluation's folder)
    accuracy_interval: tuple[float, float] | None = None  # 95% Wilson
    macro_f1_interval: tuple[float, float] | None = None  # 95% bootstrap
    model_path: str | None = None  # the model the figures are of (a model directory or an exported file)
    images_per_second: float | None = None  # measured on request (`tlearn compare --speed`, deploy/speed.py)
    latency_ms: float | None = None

    @property
    def data_key(self) -> tuple[str, str, int | None]:
        """What the figures were measured on: runs with the same key were judged on the same images."""
        return self.data, self.split, self.images

    def cells(self) -> dict[str, str]:
        """The row as text by column (control characters shown escaped)."""
        text = [
            printable(self.run),
            printable(self.backbone),
            printable(self.mode),
            _text(self.epochs, "{}"),
            _text(self.seconds, "{:.1f} s"),
            printable(_short(self.data)),
            printable(self.split),
            _text(self.images, "{}"),
            _text(self.mean_ap, "{:.3f}"),
            _with_interval(self.accuracy, self.accuracy_interval, percent=True),
            _with_interval(self.macro_f1, self.macro_f1_interval, percent=False),
            _text(self.ece, "{:.3f}"),
            _text(None if self.coverage is None else 100 * self.coverage, "{:.1f}%"),
            _text(None if self.model_bytes is None else self.model_bytes / 1e6, "{:.1f} MB"),
            _text(self.images_per_second, "{:.0f}"),
            _text(self.latency_ms, "{:.1f} ms"),
        ]
        return dict(zip(COLUMNS, text, strict=True))


def summarize_run(folder: str | Path) -> RunSummary:
    """The comparison row of a training run or evaluation folder.

    Raises:
        TlearnError: the folder holds no finished run or evaluation.

    Example:
        >>> summarize_run("runs/ants-linear").accuracy  # doctest: +SKIP
        0.954
    """
    records = read_run(folder)
    training = _training_run(records)
    metrics = records.metrics[records.split]
    config = records.model_config
    trained = training.summary if training else None
    mode = config.mode if config else (trained.model if trained else "?")
    if config and config.temperature != 1.0:
        mode += " + calibrated"
    if records.evaluation is not None and records.evaluation.tta:
        mode += " + TTA"
    task = records.task
    mode += TASK_MODE_NOTES[task.name]
    return RunSummary(
        run=str(folder),
        backbone=config.backbone.get("name", "?") if config else "?",
        mode=mode,
        epochs=max(row["epoch"] for row in training.history) if training and training.history else None,
        seconds=trained.seconds if trained else None,
        split=records.split,
        images=metrics.get("n"),
        accuracy=metrics.get("accuracy"),  # a multi-label run's is its subset accuracy
        macro_f1=metrics.get("macro_f1"),
        ece=metrics.get("ece"),
        model_bytes=records.model_bytes,
        task=task.name,
        mean_ap=metrics.get("mAP"),
        coverage=(metrics.get("reject") or {}).get("coverage"),
        data=_measured_on(records),
        accuracy_interval=_interval(metrics.get("accuracy_interval", metrics.get("subset_accuracy_interval"))),
        macro_f1_interval=_interval(metrics.get("macro_f1_interval")),
        model_path=str(records.model_path) if records.model_path else None,
    )


def table_columns(summaries: Sequence[RunSummary]) -> list[str]:
    """The columns of a table of these runs: `COLUMNS` less the optional ones no run fills."""
    filled = {column for summary in summaries for column, cell in summary.cells().items() if cell != "–"}
    return [column for column in COLUMNS if column not in OPTIONAL or column in filled]


def _headings(columns: Sequence[str], summaries: Sequence[RunSummary]) -> list[str]:
    """Column headings: the accuracy column is headed by what it holds when every run shares a task ("subset
    accuracy" for multi-label runs), "accuracy" otherwise."""
    tasks = {summary.task for summary in summaries}
    accuracy = ACCURACY_HEADINGS[tasks.pop()] if len(tasks) == 1 else "accuracy"
    return [accuracy if column == "accuracy" else column for column in columns]


def markdown_table(summaries: Sequence[RunSummary]) -> str:
    """A Markdown table with padded columns (numbers right-aligned).

    Example:
        >>> print(markdown_table([summarize_run("runs/a"), summarize_run("runs/b")]))  # doctest: +SKIP
    """
    columns = table_columns(summaries)
    rows = [
        _headings(columns, summaries),
        *([_markdown_cell(summary.cells()[column]) for column in columns] for summary in summaries),
    ]
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]
    numeric = [name in NUMERIC for name in columns]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (width + 1) + ":" if right else "-" * (width + 2)
            for width, right in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def write_comparison(summaries: Sequence[RunSummary], path: str | Path) -> Path:
    """Write the table as Markdown (`.md`) or as a self-contained HTML page (`.html`).

    Raises:
        TlearnError: the file name ends in neither.
    """
    path = Path(path)
    if path.suffix.lower() == ".md":
        atomic.write_text(path, markdown_table(summaries) + "\n")
    elif path.suffix.lower() in (".html", ".htm"):
        from tlearn.report.page import render_page  # deferred: jinja2 is only needed for pages

        columns = table_columns(summaries)
        atomic.write_text(
            path,
            render_page(
                "compare.html",
                columns=columns,
                headings=_headings(columns, summaries),
                numeric=NUMERIC,
                rows=[[summary.cells()[column] for column in columns] for summary in summaries],
                best=best_cells(summaries),
                notes=comparison_notes(summaries),
                figure=_speed_figure(summaries),
            ),
        )
    else:
        raise TlearnError(f"{path}: write the comparison to a .md or .html file")
    return path


def _speed_figure(summaries: Sequence[RunSummary]) -> str | None:
    """The accuracy-against-speed figure as a data URI for the page (None when no run was timed)."""
    points = [
        (summary.run, summary.images_per_second, summary.accuracy, summary.accuracy_interval)
        for summary in summaries
        if summary.images_per_second is not None and summary.accuracy is not None
    ]
    if not points:
        return None
    from tlearn.report.drawing import FigureDrawer  # deferred: matplotlib only when there is a figure

    png = FigureDrawer(None).draw("speed_accuracy_figure", points)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def best_cells(summaries: Sequence[RunSummary]) -> set[tuple[int, str]]:
    """(row, column) of each accuracy and macro F1 that is best among the runs judged on the same data, and
    whose 95% interval lies above every other such run's (figures without an interval are never marked)."""
    best: set[tuple[int, str]] = set()
    for column, value, interval in (
        ("accuracy", "accuracy", "accuracy_interval"),
        ("macro F1", "macro_f1", "macro_f1_interval"),
    ):
        groups: dict[tuple[str, str, int | None], list[int]] = {}
        for row, summary in enumerate(summaries):
            if getattr(summary, value) is not None and getattr(summary, interval) is not None:
                groups.setdefault(summary.data_key, []).append(row)
        for rows in groups.values():
            if len(rows) < 2:
                continue
            leader = max(rows, key=lambda row: getattr(summaries[row], value))
            low = getattr(summaries[leader], interval)[0]
            if all(low > getattr(summaries[row], interval)[1] for row in rows if row != leader):
                best.add((leader, column))
    return best


def comparison_notes(summaries: Sequence[RunSummary]) -> list[str]:
    """What a reader must know to read the table: runs on different data, and where no run stands out."""
    keys = {summary.data_key for summary in summaries}
    notes = []
    if len(keys) > 1:
        notes.append(
            f"these runs were judged on {len(keys)} different sets of images (the data, split and images columns): "
            "compare figures only between runs on the same set"
        )
    if len(summaries) > 1 and not any(column == "accuracy" for _, column in best_cells(summaries)):
        notes.append("no run's accuracy interval lies above the others' on the same images: none is marked best")
    if any(summary.images_per_second is not None for summary in summaries):
        notes.append(
            "images/s and latency: each model on onnxruntime on this machine, random pixels at its input size "
            "(no file decoding); images/s in batches of 32, latency the median of single images"
        )
    return notes


def _training_run(records: RunRecords) -> RunRecords | None:
    """The training run behind a folder: itself, or for an evaluation the run that holds its model."""
    if not records.is_evaluation:
        return records
    run_folder = records.model_path.parent if records.model_path else None
    if run_folder is None or not RunFolder(run_folder).summary.is_file():
        return None
    return read_run(run_folder)


def _measured_on(records: RunRecords) -> str:
    """The folder a run's figures were measured on: an evaluation's data, a training run's data folder."""
    if records.evaluation is not None:
        return records.evaluation.data or "?"
    return str(records.data_report.get("data") or "?")


def _short(data: str) -> str:
    """A data folder as the table shows it: its last two parts (`pools/train`), enough to tell sets apart."""
    parts = Path(data).parts
    return "/".join(parts[-2:]) if parts else data


def _interval(values: object) -> tuple[float, float] | None:
    if isinstance(values, list | tuple) and len(values) == 2 and all(isinstance(v, int | float) for v in values):
        return float(values[0]), float(values[1])
    return None


def _with_interval(value: float | None, interval: tuple[float, float] | None, *, percent: bool) -> str:
    """`87.5% (52.9–97.8)` or `0.873 (0.467–1.000)`: the figure with its 95% interval when it has one."""
    if value is None:
        return "–"
    scale, pattern = (100.0, "{:.1f}") if percent else (1.0, "{:.3f}")
    text = pattern.format(scale * value) + ("%" if percent else "")
    if interval is None:
        return text
    return f"{text} ({pattern.format(scale * interval[0])}–{pattern.format(scale * interval[1])})"


def _markdown_cell(text: str) -> str:
    """A cell that cannot split the row: Markdown reads an unescaped `|` as a column border."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _text(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)
