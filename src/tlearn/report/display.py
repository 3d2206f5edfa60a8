"""How a run shows itself in Jupyter: `run.report()` puts its metrics, curves and confusion matrix inline.

The figures are the PNG files the run's report already wrote (`RUN/figures/*.png`), so nothing is drawn
twice and matplotlib is not imported. Outside Jupyter the same object prints as one line of headline
metrics with the path of the full `report.html`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlearn.report.page import data_uri, render_page
from tlearn.runs.layout import RunFolder
from tlearn.runs.records import read_run

INLINE_FIGURES = ("training_curves", "confusion_counts")  # the rest (errors, calibration, ...) is in report.html


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
            "display.html", records=records, figures=figures, report=self.path, title=self.folder.resolve().name
        )

    def __repr__(self) -> str:
        records = read_run(self.folder)
        headline = records.metrics[records.split]
        return (
            f"{records.split}: accuracy {headline['accuracy']:.3f}, macro F1 {headline['macro_f1']:.3f} "
            f"(n={headline['n']}); full report: {self.path}"
        )
