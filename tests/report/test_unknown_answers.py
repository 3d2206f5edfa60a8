"""Runs with a reject rule in the report, the notebook display and `compare`; compare and display of
multi-label runs, and of runs whose metrics.json lacks figures."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tlearn.report.compare import markdown_table, summarize_run, write_comparison
from tlearn.report.display import RunReport
from tlearn.report.page import reject_purpose, write_report


def section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}">')
    return page[start : page.index("</section>", start)]


def cells(line: str) -> list[str]:
    """The cells of one Markdown table row, unpadded."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def page(reject_run) -> str:
    return write_report(reject_run.path).read_text(encoding="utf-8")


def test_unknown_answers_section_shows_the_rule_and_its_numbers(reject_run, page):
    test = reject_run.metrics["test"]["reject"]
    unknown = section(page, "unknown")
    assert "<h2>Unknown answers</h2>" in unknown and 'href="#unknown"' in page
    assert f"(<b>{test['threshold']:.3f}</b>)" in unknown
    assert "k-th nearest training embedding (k = 5)" in unknown
    assert "The threshold was chosen on the validation images to keep 95.0% accuracy on the images answered." in unknown
    cards = re.findall(r'<div class="value">([^<]+)</div>', unknown)
    assert cards == [f"{100 * test[key]:.1f}%" for key in ("coverage", "selective_accuracy", "accuracy_all")]
    for split, values in reject_run.metrics.items():
        row = re.search(rf"<tr><td>{split}.*?</tr>", unknown, flags=re.S).group(0)
        reject = values["reject"]
        assert re.findall(r'<td class="n">([^<]+)</td>', row) == [
            f"{reject['threshold']:.3f}",
            *(f"{100 * reject[key]:.1f}%" for key in ("coverage", "selective_accuracy", "accuracy_all")),
        ]
    assert (
        "figures/accuracy_coverage.png" in unknown and (reject_run.path / "figures" / "accuracy_coverage.png").is_file()
    )
    assert f"the model answered {100 * test['coverage']:.1f}% of these images" in section(page, "overview")
    # The single-label sections are all still there.
    for name in ("confusion", "errors", "calibration"):
        assert f'<section id="{name}">' in page


def test_a_run_judged_on_cross_validation_shows_the_val_rule_even_when_nothing_is_answered(reject_run, tmp_path):
    folder = tmp_path / "cv"
    shutil.copytree(reject_run.path, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    cv = {key: value for key, value in metrics.pop("test").items() if key != "reject"}  # no reject on cv: as trained
    metrics["cv"] = cv
    metrics["val"]["reject"].update(coverage=0.0, selective_accuracy=None, answered=0)  # a threshold above every score
    (folder / "metrics.json").write_text(json.dumps(metrics))
    predictions = (folder / "predictions.csv").read_text().replace(",test,", ",cv,")
    (folder / "predictions.csv").write_text(predictions)
    page = write_report(folder).read_text(encoding="utf-8")
    unknown = section(page, "unknown")
    assert "of the images of the val split answered (0)" in unknown
    assert re.findall(r'<div class="value">([^<]+)</div>', unknown)[:2] == ["0.0%", "–"]
    assert "answered 0.0% of the images of the val split (" in section(page, "overview")
    assert repr(RunReport(folder)).startswith(f"cv: accuracy {cv['accuracy']:.3f}, macro F1 {cv['macro_f1']:.3f} (n=")


def test_a_run_without_reject_rule_has_no_unknown_section(multilabel_run):
    page = write_report(multilabel_run.path).read_text(encoding="utf-8")
    assert 'id="unknown"' not in page and "Unknown answers" not in page


def test_reject_purpose_names_the_target():
    assert (
        reject_purpose({"coverage": 0.9})
        == "The threshold was chosen on the validation images to answer 90.0% of the images."
    )
    assert "not recorded" in reject_purpose({})


def test_display_adds_the_share_answered(reject_run, page):
    test = reject_run.metrics["test"]
    reject = test["reject"]
    report = RunReport(reject_run.path)
    assert repr(report).startswith(
        f"test: accuracy {test['accuracy']:.3f}, macro F1 {test['macro_f1']:.3f}, "
        f"answered {100 * reject['coverage']:.1f}% at accuracy {reject['selective_accuracy']:.3f} (n={test['n']})"
    )
    html = report._repr_html_()
    assert ">answered<" in html and f">{100 * reject['selective_accuracy']:.1f}%<" in html
    assert html.count("<tr>") == 1 + len(reject_run.metrics)


def test_compare_multilabel_runs_by_map_and_subset_accuracy(multilabel_run, tmp_path):
    summary = summarize_run(multilabel_run.path)
    test = multilabel_run.metrics["test"]
    assert summary.mean_ap == test["mAP"] and summary.accuracy == test["subset_accuracy"] and summary.ece is None
    lines = markdown_table([summary, summary]).splitlines()
    headings, row = cells(lines[0]), cells(lines[2])
    assert headings[7:11] == ["images", "mAP", "subset accuracy", "macro F1"] and "ECE" not in headings
    assert row[2] == "linear + multi-label"
    low, high = test["subset_accuracy_interval"]
    assert row[7:11] == [
        str(test["n"]),
        f"{test['mAP']:.3f}",
        f"{100 * test['subset_accuracy']:.1f}% ({100 * low:.1f}–{100 * high:.1f})",
        f"{test['macro_f1']:.3f}",  # multi-label macro F1 has no interval
    ]
    html = write_comparison([summary, summary], tmp_path / "table.html").read_text()
    assert ">subset accuracy</th>" in html and html.count('class="n best"') == 0  # a tie: no interval is above


def test_compare_mixed_runs_shows_each_figure_where_it_applies(multilabel_run, reject_run):
    lines = markdown_table([summarize_run(multilabel_run.path), summarize_run(reject_run.path)]).splitlines()
    assert cells(lines[0])[8:13] == ["mAP", "accuracy", "macro F1", "ECE", "answered"]
    multilabel, single = (cells(line) for line in lines[2:])
    test = reject_run.metrics["test"]
    assert multilabel[11:13] == ["–", "–"]  # no ECE, every image answered
    assert single[8] == "–" and single[11:13] == [f"{test['ece']:.3f}", f"{100 * test['reject']['coverage']:.1f}%"]


def test_display_and_compare_survive_missing_figures(multilabel_run, tmp_path):
    stripped = tmp_path / "stripped"
    shutil.copytree(multilabel_run.path, stripped)
    metrics = json.loads((stripped / "metrics.json").read_text())
    for values in metrics.values():
        for key in ("mAP", "micro_f1", "macro_f1", "hamming_loss"):
            del values[key]
    (stripped / "metrics.json").write_text(json.dumps(metrics))
    assert repr(RunReport(stripped)).startswith("test: mAP –, subset accuracy ")
    assert "<td" in RunReport(stripped)._repr_html_()
    summary = summarize_run(stripped)
    assert summary.mean_ap is None and summary.macro_f1 is None
    assert "mAP" not in markdown_table([summary]).splitlines()[0]
