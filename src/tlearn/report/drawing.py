"""The report's figures, drawn once per content: a figure whose data did not change is read back as PNG bytes.

Drawing the four figures of a linear run took 0.65 s here and importing matplotlib 0.4 s more, a third of a
warm training run that otherwise reads cached results (benchmarks/bench_warm.py). Each figure is a pure
function of its arguments (`tlearn.report.figures`), so its PNG is kept in the result cache under a digest of
the function's name and arguments, and matplotlib is imported only when something must be drawn.
"""

from __future__ import annotations

from typing import Any

from tlearn.backbones.result_cache import ResultCache, remembered


class FigureDrawer:
    """Calls `tlearn.report.figures` functions through the result cache (None: always draws).

    Example:
        >>> drawer = FigureDrawer(None)
        >>> drawer.draw("head_search_curves", [{"c": 1.0, "cv_loss": 0.3, "cv_accuracy": 0.9}], 1.0)[:4]
        b'\\x89PNG'
    """

    def __init__(self, results: ResultCache | None) -> None:
        self.results = results

    def draw(self, figure: str, *args: Any, **kwargs: Any) -> bytes:
        """The PNG of `tlearn.report.figures.<figure>(*args, **kwargs)`."""

        def drawn() -> bytes:
            from tlearn.report import figures  # deferred: matplotlib takes 0.4 s to import

            return getattr(figures, figure)(*args, **kwargs)

        return remembered(self.results, f"figure {figure}", drawn, args, kwargs)
