"""`run.report()`: the run's metrics and figures inline in Jupyter, one line of text elsewhere."""

from __future__ import annotations

import json

from tlearn.config import TrainConfig
from tlearn.pipeline import Run
from tlearn.report.display import INLINE_FIGURES, RunReport
from tlearn.report.thumbnails import data_uri
from tlearn.runs.layout import RunFolder


def test_html_holds_every_split_and_the_runs_own_figures(exported_model):
    metrics = json.loads((exported_model.run / "metrics.json").read_text())
    page = RunReport(exported_model.run)._repr_html_()
    assert page.count("<tr>") == 1 + len(metrics)  # heading + one row per evaluated split
    for split, values in metrics.items():
        assert f">{split}" in page and f"{100 * values['accuracy']:.1f}%" in page
    shown = [name for name in INLINE_FIGURES if RunFolder(exported_model.run).figure(name).is_file()]
    assert shown == ["training_curves", "confusion_counts"]  # a single-label run without a reject rule
    for name in shown:
        png = RunFolder(exported_model.run).figure(name).read_bytes()
        assert data_uri(png, "image/png") in page
    assert "<html" not in page and "<style" not in page  # a fragment that cannot restyle the notebook


def test_text_names_the_headline_metrics_and_the_full_report(exported_model):
    test = json.loads((exported_model.run / "metrics.json").read_text())["test"]
    assert repr(RunReport(exported_model.run)) == (
        f"test: accuracy {test['accuracy']:.3f}, macro F1 {test['macro_f1']:.3f} (n={test['n']}); "
        f"full report: {exported_model.run / 'report.html'}"
    )


def test_run_report_is_the_run_folders(exported_model):
    run = Run(exported_model.run, TrainConfig(data=exported_model.data), metrics={}, history_rows=[], data_report={})
    assert run.report() == RunReport(exported_model.run)
