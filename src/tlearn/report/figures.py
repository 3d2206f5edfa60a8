"""The report's figures as PNG bytes: training curves, confusion matrices, reliability diagram, per-class
precision–recall curves (multi-label runs), accuracy against coverage (runs that may answer "unknown") and
accuracy against speed (`tlearn compare --speed`).

matplotlib's object API (`Figure`, no pyplot): no display, no global state, the Agg renderer. Each function
takes plain data and returns the PNG, so the report decides where it goes (a file and the HTML page).
matplotlib is imported here only, and this module only when a report is written, so the CLI starts fast.

Class names come from folder names, which may hold `$`: matplotlib would read `$...$` as mathtext (and fail
on `$^$`), so every figure is drawn with mathtext off and names render literally.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from tlearn.evaluation.calibration import ReliabilityBins
from tlearn.report.multilabel import ClassCurve
from tlearn.util.text import printable

TRAIN_COLOUR = "#4c72b0"
VAL_COLOUR = "#dd8452"
ERROR_COLOUR = "#c44e52"
DPI = 110
_ANNOTATED_CLASSES = 20  # confusion matrices with more classes show colours only, no numbers in the cells
_CURVE_COLUMNS = 4  # precision–recall panels per row
# Fixed margins for the fixed-size figures: a layout engine would draw each figure twice.
_TWO_PANEL_MARGINS = {"left": 0.06, "right": 0.99, "bottom": 0.13, "top": 0.92, "wspace": 0.18}
_LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}

_Params = ParamSpec("_Params")


def _literal_text(draw: Callable[_Params, bytes]) -> Callable[_Params, bytes]:
    """Draw with mathtext and TeX off: every string (class names included) is rendered as written."""

    @functools.wraps(draw)
    def drawing(*args: _Params.args, **kwargs: _Params.kwargs) -> bytes:
        with matplotlib.rc_context(_LITERAL_TEXT):
            return draw(*args, **kwargs)

    return drawing


@_literal_text
def training_curves(history: Sequence[dict[str, Any]], *, best_epoch: int | None = None) -> bytes:
    """Loss and accuracy per epoch, train and val, with the stages (linear head, unfreezing) shaded.

    Args:
        history: rows of `history.csv` (epoch, stage, train_loss, train_accuracy, val_loss, val_accuracy);
            missing values are None.
        best_epoch: the epoch whose weights were kept, marked on the validation curves.

    Example:
        >>> png = training_curves([{"epoch": 0, "stage": "linear head", "train_loss": 0.2, "train_accuracy": 0.9,
        ...                         "val_loss": 0.3, "val_accuracy": 0.88}])
        >>> png[:4] == b"\\x89PNG"
        True
    """
    epochs = np.array([row["epoch"] for row in history], dtype=float)
    figure = Figure(figsize=(10, 4), dpi=DPI)
    figure.subplots_adjust(**_TWO_PANEL_MARGINS)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        _shade_stages(axes, history)
        for split, colour, style in (("train", TRAIN_COLOUR, "--"), ("val", VAL_COLOUR, "-")):
            values = np.array(
                [np.nan if row[f"{split}_{metric}"] is None else row[f"{split}_{metric}"] for row in history],
                dtype=float,
            )
            axes.plot(epochs, values, style, marker="o", markersize=4, color=colour, label=split)
            if split == "val" and best_epoch is not None and best_epoch in epochs:
                best = values[list(epochs).index(best_epoch)]
                axes.plot(
                    [best_epoch],
                    [best],
                    marker="*",
                    markersize=14,
                    color=colour,
                    linestyle="none",
                    label=f"kept (epoch {best_epoch})",
                )
        axes.margins(y=0.15)  # room for the stage labels above the curves
        axes.set_xlabel("epoch (0 = linear head; at the top: layer groups unfrozen)")
        axes.set_title(metric)
        axes.set_xticks(epochs)
        axes.grid(alpha=0.3)
    accuracy_axes.legend(loc="best", fontsize=8)  # few points: "best" is cheap here
    return _png(figure)


@_literal_text
def hardware_curves(history: Sequence[dict[str, Any]]) -> bytes:
    """How busy the machine was per fine-tuning epoch: CPU use and memory, and the GPU's when there was one.

    Args:
        history: rows of `history.csv` with `cpu_percent`, `rss_mb`, `gpu_percent`, `gpu_memory_mb` (None or
            missing where not measured).

    Example:
        >>> png = hardware_curves([{"epoch": 1, "cpu_percent": 180.0, "rss_mb": 2000.0}])
        >>> png[:4] == b"\\x89PNG"
        True
    """
    measured = [row for row in history if row.get("cpu_percent") is not None or row.get("rss_mb") is not None]
    epochs = np.array([row["epoch"] for row in measured], dtype=float)

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if row.get(name) is None else row[name] for row in measured], dtype=float)

    figure = Figure(figsize=(10, 3.2), dpi=DPI)
    figure.subplots_adjust(**_TWO_PANEL_MARGINS)
    busy_axes, memory_axes = figure.subplots(1, 2)
    busy_axes.plot(epochs, column("cpu_percent"), "-", marker="o", markersize=4, color=TRAIN_COLOUR, label="CPU")
    memory_axes.plot(epochs, column("rss_mb") / 1024, "-", marker="o", markersize=4, color=TRAIN_COLOUR, label="RAM")
    if any(row.get("gpu_percent") is not None for row in measured):
        busy_axes.plot(epochs, column("gpu_percent"), "-", marker="s", markersize=4, color=VAL_COLOUR, label="GPU")
        memory_axes.plot(
            epochs, column("gpu_memory_mb") / 1024, "-", marker="s", markersize=4, color=VAL_COLOUR, label="GPU"
        )
    busy_axes.set_title("utilisation (%; CPU: 100 per busy core)")
    memory_axes.set_title("memory (GB; RAM: tlearn and its workers, peak)")
    for axes in (busy_axes, memory_axes):
        axes.set_xlabel("epoch")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize=8)
    return _png(figure)


@_literal_text
def head_search_curves(candidates: Sequence[dict[str, float]], chosen_c: float) -> bytes:
    """The linear head's "training curve": cross-validated loss and accuracy against the L2 strengths tried.

    A closed-form head has no epochs; what was learnt is which L2 strength (C, inverse) fits best out of fold.

    Example:
        >>> png = head_search_curves([{"c": 0.1, "cv_loss": 0.3, "cv_accuracy": 0.9}], 0.1)
        >>> png[:4] == b"\\x89PNG"
        True
    """
    strengths = np.array([row["c"] for row in candidates], dtype=float)
    figure = Figure(figsize=(10, 4), dpi=DPI)
    figure.subplots_adjust(**_TWO_PANEL_MARGINS)
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        axes.plot(
            strengths,
            [row[f"cv_{metric}"] for row in candidates],
            "-",
            marker="o",
            markersize=4,
            color=VAL_COLOUR,
            label="cross-validated (out of fold)",
        )
        axes.axvline(chosen_c, color="#555555", linestyle=":", label=f"chosen C = {chosen_c:g}")
        axes.set_xscale("log")
        # Plain tick labels: matplotlib's default 10^k labels go through mathtext, the slowest part of a figure.
        axes.set_xticks(strengths, [f"{value:g}" for value in strengths], fontsize=8)
        axes.minorticks_off()
        axes.set_xlabel("C (inverse L2 strength; weaker regularisation to the right)")
        axes.set_title(f"linear head: {metric.replace('_', ' ')}")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left" if metric == "accuracy" else "upper right", fontsize=8)  # "best" is slow
    return _png(figure)


@_literal_text
def confusion_matrix_figure(matrix: np.ndarray, classes: Sequence[str], *, normalise: bool) -> bytes:
    """The confusion matrix (rows: true class) as counts or row-normalised, readable from 2 to 100 classes.

    The figure grows with the number of classes (up to 15 inches of matrix) and the labels shrink with the
    cells; cells carry their numbers up to 20 classes, beyond that the colour alone. Margins are computed
    from the label lengths rather than by a layout engine, which would draw a 100-class figure twice.

    Example:
        >>> confusion_matrix_figure(np.array([[5, 1], [0, 4]]), ["ants", "bees"], normalise=True)[:4] == b"\\x89PNG"
        True
    """
    counts = np.asarray(matrix, dtype=float)
    count = len(classes)
    if normalise:
        support = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
        top = 1.0
    else:
        values, top = counts, max(1.0, float(counts.max()))
    side = float(np.clip(1.2 + 0.14 * count, 3.5, 15.0))  # inches of matrix
    font = float(np.clip(0.6 * 72 * side / count, 5.0, 10.0))  # points: most of one cell's height
    shown = [printable(name) for name in classes]  # control characters as escapes: fonts have no glyph for them
    names = [name if len(name) <= 24 else name[:23] + "…" for name in shown]
    upright = count > 8 or max(map(len, names)) > 10  # x labels vertical unless a few short names
    left = (max(map(len, names)) * 0.6 * font + 30) / 72  # inches for tick labels and axis title
    bottom = left if upright else (font + 30) / 72
    width, height = left + side + 1.5, bottom + side + 0.5  # + colour bar; + title
    figure = Figure(figsize=(width, height), dpi=DPI)
    axes = figure.add_axes((left / width, bottom / height, side / width, side / height))
    colour_axes = figure.add_axes(((left + side + 0.2) / width, bottom / height, 0.2 / width, side / height))
    image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=top, interpolation="nearest", aspect="auto")
    figure.colorbar(image, cax=colour_axes, label="share of the true class" if normalise else "images")
    axes.set_xticks(range(count), names, rotation=90 if upright else 0, fontsize=font)
    axes.set_yticks(range(count), names, fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("confusion matrix, row-normalised" if normalise else "confusion matrix, counts")
    if count <= _ANNOTATED_CLASSES:
        for (row, column), value in np.ndenumerate(values):
            text = f"{value:.0%}" if normalise else f"{int(value)}"
            axes.text(
                column,
                row,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if value > 0.55 * top else "#222222",
            )
    return _png(figure)


@_literal_text
def reliability_diagram(
    bins: ReliabilityBins, *, uncalibrated: ReliabilityBins | None = None, temperature: float = 1.0
) -> bytes:
    """Accuracy against confidence per bin (a calibrated model follows the diagonal), and how many images
    fall in each bin.

    Args:
        bins: reliability bins of the model's (calibrated) probabilities.
        uncalibrated: the same before temperature scaling, drawn as a line when given.
        temperature: the temperature the model divides its logits by (named in the legend).

    Example:
        >>> from tlearn.evaluation.calibration import reliability_bins
        >>> bins = reliability_bins(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
        >>> reliability_diagram(bins)[:4] == b"\\x89PNG"
        True
    """
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = bins.edges[1] - bins.edges[0]
    filled = bins.counts > 0
    figure = Figure(figsize=(5.5, 6), dpi=DPI)
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.09, top=0.94, hspace=0.08)
    accuracy_axes, count_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    accuracy_axes.plot([0, 1], [0, 1], ":", color="#555555", label="perfect calibration")
    accuracy_axes.bar(
        centres[filled],
        bins.accuracy[filled],
        width=width,
        color=VAL_COLOUR,
        edgecolor="white",
        label="accuracy in bin",
    )
    gap = bins.confidence[filled] - bins.accuracy[filled]
    accuracy_axes.bar(
        centres[filled],
        gap,
        bottom=bins.accuracy[filled],
        width=width,
        color=ERROR_COLOUR,
        alpha=0.3,
        edgecolor=ERROR_COLOUR,
        hatch="//",
        label="gap to confidence",
    )
    if uncalibrated is not None:
        shown = uncalibrated.counts > 0
        accuracy_axes.plot(
            uncalibrated.confidence[shown],
            uncalibrated.accuracy[shown],
            marker="o",
            markersize=4,
            color=TRAIN_COLOUR,
            label=f"before temperature scaling (ECE {uncalibrated.ece:.3f})",
        )
    label = f"ECE {bins.ece:.3f}" + (f", temperature {temperature:.2f}" if temperature != 1.0 else "")
    accuracy_axes.set_title(f"reliability ({label})")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_xlim(0, 1)
    accuracy_axes.set_ylim(0, 1)
    accuracy_axes.grid(alpha=0.3)
    accuracy_axes.legend(loc="upper left", fontsize=8)
    count_axes.bar(centres, bins.counts, width=width, color="#888888", edgecolor="white")
    count_axes.set_xlabel("confidence (top-1 probability)")
    count_axes.set_ylabel("images")
    return _png(figure)


@_literal_text
def precision_recall_figure(curves: Sequence[ClassCurve]) -> bytes:
    """One small precision–recall panel per class of a multi-label run, the model's threshold starred.

    Each panel also draws the class's share of positive images: the precision of a ranking that ignores the
    image, which the curve should stay well above.

    Example:
        >>> from tlearn.report.multilabel import precision_recall_curves
        >>> curves = precision_recall_curves(np.array([[1], [0]]), np.array([[0.9], [0.2]]), [0.5], ["pool"])
        >>> precision_recall_figure(curves)[:4] == b"\\x89PNG"
        True
    """
    columns = max(1, min(_CURVE_COLUMNS, len(curves)))
    rows = max(1, -(-len(curves) // columns))
    width, height = 3.0 * columns + 0.5, 2.7 * rows + 0.4  # inches: each panel 3 x 2.7, margins for the labels
    figure = Figure(figsize=(width, height), dpi=DPI)
    figure.subplots_adjust(
        left=0.55 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.3 / height, hspace=0.5, wspace=0.25
    )
    panels = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    for axes, curve in zip(panels, curves, strict=False):
        axes.plot(curve.recall, curve.precision, drawstyle="steps-post", color=VAL_COLOUR, linewidth=1.5)
        axes.axhline(curve.positive_share, color="#888888", linestyle=":", linewidth=1)
        axes.plot(*curve.point, marker="*", markersize=12, color=ERROR_COLOUR, linestyle="none")
        name = printable(curve.name)
        name = name if len(name) <= 22 else name[:21] + "…"
        axes.set_title(f"{name}: AP {curve.average_precision:.2f}, t = {curve.threshold:.2f}", fontsize=8)
        axes.set_xlim(0, 1.02)
        axes.set_ylim(0, 1.05)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    for axes in panels[len(curves) :]:
        axes.set_visible(False)
    for axes in panels[::columns]:
        axes.set_ylabel("precision", fontsize=8)
    for axes in panels[max(0, len(curves) - columns) : len(curves)]:
        axes.set_xlabel("recall", fontsize=8)
        axes.xaxis.set_tick_params(labelbottom=True)
    return _png(figure)


@_literal_text
def accuracy_coverage_figure(
    coverage: Sequence[float],
    accuracy: Sequence[float],
    *,
    chosen: tuple[float, float] | None,
    accuracy_all: float | None = None,
    target: dict[str, float] | None = None,
) -> bytes:
    """Accuracy on the answered images against the share answered, answering the most familiar images first.

    Args:
        coverage: shares of images answered, as the reject threshold falls.
        accuracy: accuracy on the answered images at each coverage.
        chosen: (coverage, accuracy) at the model's threshold, starred (None: no image reaches it).
        accuracy_all: accuracy when every image is answered, drawn as a line.
        target: what the threshold was chosen for ({"accuracy": a} or {"coverage": c}), drawn as a line.

    Example:
        >>> accuracy_coverage_figure([0.5, 1.0], [1.0, 0.8], chosen=(0.5, 1.0))[:4] == b"\\x89PNG"
        True
    """
    figure = Figure(figsize=(6, 4.2), dpi=DPI)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    axes = figure.subplots()
    axes.plot(coverage, accuracy, "-", color=VAL_COLOUR, linewidth=1.5, label="answered images")
    if accuracy_all is not None:
        axes.axhline(accuracy_all, color="#555555", linestyle=":", label=f"answering all ({accuracy_all:.1%})")
    target = target or {}
    if "accuracy" in target:
        axes.axhline(target["accuracy"], color=TRAIN_COLOUR, linestyle="--", linewidth=1, label="target accuracy")
    if "coverage" in target:
        axes.axvline(target["coverage"], color=TRAIN_COLOUR, linestyle="--", linewidth=1, label="target coverage")
    if chosen is not None:
        axes.plot(
            *chosen,
            marker="*",
            markersize=14,
            color=ERROR_COLOUR,
            linestyle="none",
            label=f"threshold: {chosen[0]:.1%} answered, {chosen[1]:.1%} right",
        )
    axes.set_xlim(0, 1.02)
    axes.set_xlabel("coverage (share of images answered; the rest get “unknown”)")
    axes.set_ylabel("accuracy on the answered images")
    axes.set_title("accuracy against coverage")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    return _png(figure)


@_literal_text
def speed_accuracy_figure(points: Sequence[tuple[str, float, float, tuple[float, float] | None]]) -> bytes:
    """Each model's accuracy (with its 95% interval) against its images per second: the trade-off at a glance.

    Args:
        points: (name, images per second, accuracy, interval or None) per model.

    Example:
        >>> speed_accuracy_figure([("a", 100.0, 0.9, (0.8, 0.95)), ("b", 300.0, 0.85, None)])[:4] == b"\\x89PNG"
        True
    """
    figure = Figure(figsize=(6, 4.2), dpi=DPI)
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.92)
    axes = figure.subplots()
    for name, speed, accuracy, interval in points:
        low, high = interval if interval is not None else (accuracy, accuracy)
        axes.errorbar(
            [speed], [accuracy], yerr=[[accuracy - low], [high - accuracy]], fmt="o", color=TRAIN_COLOUR, capsize=3
        )
        axes.annotate(printable(name), (speed, accuracy), textcoords="offset points", xytext=(6, 4), fontsize=8)
    speeds = [point[1] for point in points]
    axes.set_xscale("log")
    axes.set_xlim(min(speeds) / 1.3, max(speeds) * 1.8)  # room for the names right of the points
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # with mathtext off, log ticks would print as TeX
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "235" else ""))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0%}"))
    axes.set_xlabel("images per second on this machine (onnxruntime, batches of 32; log scale)")
    axes.set_ylabel("accuracy (95% interval)")
    axes.set_title("accuracy against speed")
    axes.grid(alpha=0.3, which="both")
    return _png(figure)


def _shade_stages(axes: Any, history: Sequence[dict[str, Any]]) -> None:
    """Alternate light bands for consecutive epochs of one stage, each labelled at the top."""
    runs: list[tuple[str, float, float]] = []  # (stage, first epoch, last epoch)
    for row in history:
        if runs and runs[-1][0] == row["stage"]:
            runs[-1] = (row["stage"], runs[-1][1], row["epoch"])
        else:
            runs.append((row["stage"], row["epoch"], row["epoch"]))
    for index, (stage, first, last) in enumerate(runs):
        axes.axvspan(first - 0.5, last + 0.5, color="#000000", alpha=0.06 if index % 2 else 0.0, linewidth=0)
        label = "head" if stage == "linear head" else stage.removeprefix("unfreeze ")
        axes.text(
            (first + last) / 2,
            0.98,
            label,
            transform=axes.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=7,
            color="#555555",
        )


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
