"""The report of a multi-label run: its own headline, per-class table, precision–recall curves and worst label
sets; none of the single-label sections (confusion matrix, calibration) that have no meaning there."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from tlearn.evaluation.multilabel import worst_label_sets
from tlearn.evaluation.tasks import LABEL_SET_SEPARATOR
from tlearn.report.display import RunReport
from tlearn.report.multilabel import label_targets, precision_recall_curves
from tlearn.report.page import write_report
from tlearn.report.thumbnails import data_uri


def section(page: str, name: str) -> str:
    """The HTML of one `<section id=name>` of the page."""
    start = page.index(f'<section id="{name}">')
    return page[start : page.index("</section>", start)]


@pytest.fixture(scope="module")
def page(multilabel_run) -> str:
    return write_report(multilabel_run.path).read_text(encoding="utf-8")


def test_sections_are_the_multilabel_ones(multilabel_run, page):
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids == ["overview", "training", "metrics", "precision-recall", "label-sets", "before-after", "dataset"]
    assert "confusion" not in page.lower() and "calibration" not in page.lower() and "reliability" not in page
    figures = {path.stem for path in (multilabel_run.path / "figures").glob("*.png")}
    assert figures == {"training_curves", "precision_recall"}
    with Image.open(multilabel_run.path / "figures" / "precision_recall.png") as curves:
        assert curves.width >= 1000  # three labels with positives: three panels side by side


def test_headline_and_tables_carry_the_runs_figures(multilabel_run, page):
    test = multilabel_run.metrics["test"]
    overview = section(page, "overview")
    low, high = test["subset_accuracy_interval"]
    for figure in (
        f"{test['mAP']:.3f}",
        f"{100 * test['subset_accuracy']:.1f}%",
        f"95% interval {100 * low:.1f}% – {100 * high:.1f}%",
        f"{test['micro_f1']:.3f} / {test['macro_f1']:.3f}",
        f"{test['hamming_loss']:.3f}",
        f"{test['predicted_cardinality']:.2f}",
        f"given {test['label_cardinality']:.2f}",
    ):
        assert figure in overview, figure
    # Chance mAP: each label's share of the test images, averaged over the labels present on test.
    shares = [values["support"] / test["n"] for values in test["per_class"].values() if values["support"]]
    assert f"a ranking that ignores the image: {np.mean(shares):.3f}" in overview
    metrics = section(page, "metrics")
    for split, values in multilabel_run.metrics.items():
        assert f"{values['mAP']:.3f}" in metrics and f"{values['hamming_loss']:.3f}" in metrics, split
    rows = re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", metrics.split('class="per-class"')[1], flags=re.S)
    assert [name for name, _ in rows] == list(test["classes"])
    for name, cells in rows:
        values = test["per_class"][name]
        numbers = re.findall(r">([–\d.]+)<", cells)
        ap = "–" if values["ap"] is None else f"{values['ap']:.3f}"
        assert numbers[:3] == [ap, f"{values['precision']:.3f}", f"{values['recall']:.3f}"], name
        assert numbers[-2:] == [str(values["support"]), f"{values['threshold']:.3f}"], name
    assert test["per_class"]["solar"]["ap"] is None  # never present on test: no AP, no curve
    assert "No positive image on the test split (no curve): solar." in section(page, "precision-recall")


def test_precision_recall_points_are_the_decisions_at_each_threshold(multilabel_run):
    test = multilabel_run.metrics["test"]
    thresholds = [test["per_class"][name]["threshold"] for name in test["classes"]]
    curves = precision_recall_curves(
        multilabel_run.targets["test"], multilabel_run.probabilities["test"], thresholds, test["classes"]
    )
    assert [curve.name for curve in curves] == ["pool", "garage", "tree"]
    for curve in curves:
        values = test["per_class"][curve.name]
        assert curve.point == pytest.approx((values["recall"], values["precision"]))
        assert curve.average_precision == pytest.approx(values["ap"])
        assert curve.positive_share == pytest.approx(values["support"] / test["n"])


def test_worst_label_sets_gallery(multilabel_run, page):
    rows = multilabel_run.rows["test"]
    test = multilabel_run.metrics["test"]
    thresholds = [test["per_class"][name]["threshold"] for name in test["classes"]]
    expected = worst_label_sets(multilabel_run.targets["test"], multilabel_run.probabilities["test"], thresholds, 12)
    gallery = section(page, "label-sets")
    shown = re.findall(r'<div class="path" title="([^"]+)">', gallery)
    assert shown == [rows[index]["path"] for index, _ in expected] and len(shown) >= 3
    assert shown[:2] == ["test_00.png", "test_01.png"]  # the two answers the model was surest of, both wrong
    assert gallery.count('src="data:image/jpeg;base64,') == len(shown)
    first, second = gallery.split('<div class="tile">')[1:3]
    assert "given: <b>pool, garage</b>" in first and "missed: pool 2.0%" in first
    assert '<span class="right">garage</span>' in first
    assert (
        "given: <b>tree</b>" in second and '<span class="wrong">pool</span>' in second and "added: pool 97.0%" in second
    )
    wrong_sets = sum(
        set(row["label"].split(LABEL_SET_SEPARATOR)) != set(filter(None, row["predicted"].split(LABEL_SET_SEPARATOR)))
        for row in rows
    )
    assert f"of {wrong_sets} images with a wrong label set" in gallery


def test_before_after_marks_each_given_answer(page):
    panel = section(page, "before-after")
    assert panel.count("<tr>") == 1 + 3  # header + the three images with ImageNet answers
    first_row = panel.split("<tr>")[2]
    assert "<b>pool, garage</b>" in first_row
    # test_00: garage (0.9) reaches its threshold and is given; tree and solar (0.1) are below theirs.
    assert re.search(r'<li class="right">garage', first_row) and '<li class="wrong">' not in first_row


def test_label_targets_refuse_a_label_of_another_run():
    rows = [{"path": "a.png", "label": "pool|moat"}]
    with pytest.raises(Exception, match="'moat', which is not among the run's classes"):
        label_targets(rows, ["pool", "garage"])


def test_display_shows_map_and_subset_accuracy(multilabel_run, page):
    test = multilabel_run.metrics["test"]
    report = RunReport(multilabel_run.path)
    assert repr(report) == (
        f"test: mAP {test['mAP']:.3f}, subset accuracy {test['subset_accuracy']:.3f}, micro F1 {test['micro_f1']:.3f}, "
        f"macro F1 {test['macro_f1']:.3f} (n={test['n']}); full report: {multilabel_run.path / 'report.html'}"
    )
    html = report._repr_html_()
    assert "mAP" in html and "subset accuracy" in html and "balanced accuracy" not in html and "ECE" not in html
    for values in multilabel_run.metrics.values():
        assert f"{values['mAP']:.3f}" in html and f"{100 * values['subset_accuracy']:.1f}%" in html
    png = (multilabel_run.path / "figures" / "precision_recall.png").read_bytes()
    assert data_uri(png, "image/png") in html


def test_multilabel_report_renders_in_headless_chromium(multilabel_run, page, browser):
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.goto((multilabel_run.path / "report.html").resolve().as_uri())
    for name in ("overview", "training", "metrics", "precision-recall", "label-sets", "before-after", "dataset"):
        assert tab.locator(f"section#{name}").is_visible(), name
    assert tab.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert tab.locator("#label-sets .tile").count() == len(
        re.findall('<div class="tile">', section(page, "label-sets"))
    )
    tab.close()
