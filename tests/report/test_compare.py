"""`tlearn compare`: runs side by side in the terminal, as Markdown and as HTML."""

from __future__ import annotations

import pytest

import tlearn
from helpers import run_cli
from tlearn.evaluation.intervals import wilson_interval
from tlearn.report.compare import RunSummary, best_cells, comparison_notes, markdown_table


def test_compare_prints_and_writes_the_table(capsys, tiny_data, tmp_path):
    plain = tlearn.train(tiny_data, out=tmp_path / "plain", quiet=True, split=(0.6, 0.2, 0.2))
    finer = tlearn.train(tiny_data, out=tmp_path / "split", quiet=True, split=(0.7, 0.3, 0.0))
    code, out, _ = run_cli(capsys, "compare", plain.path, finer.path, "--out", tmp_path / "table.md")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("| run ") and "macro F1" in lines[0] and "ECE" in lines[0]
    # A run without a test split is judged on its linear head's cross-validation over train + val.
    assert str(plain.path) in lines[2] and "| test " in lines[2] and "| cv " in lines[3]
    assert f"{100 * plain.metrics['test']['accuracy']:.1f}%" in lines[2] and "MB" in lines[2]
    assert (tmp_path / "table.md").read_text().splitlines() == lines[:4]
    # one judged on its test split, one out of fold: different images, and the console says so
    assert lines[4].startswith("note: these runs were judged on 2 different sets of images")
    code, _, _ = run_cli(capsys, "compare", plain.path, finer.path, "--out", tmp_path / "table.html")
    html = (tmp_path / "table.html").read_text()
    assert code == 0 and html.count("<tr>") == 3 and str(finer.path) in html


def test_compare_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compare", tmp_path)
    assert code == 2 and "no metrics.json" in err


def row(run: str, correct: int, n: int, *, data: str = "/data/ants/val", split: str = "test") -> RunSummary:
    return RunSummary(
        run, "lite0", "linear", 0, 1.0, split, n, correct / n, None, None, None,
        data=data, accuracy_interval=wilson_interval(correct, n),
    )  # fmt: skip


@pytest.mark.parametrize(
    "rows, marked",
    [
        ([row("a", 150, 153), row("b", 100, 153)], {(0, "accuracy")}),  # intervals apart: the better is marked
        ([row("a", 148, 153), row("b", 145, 153)], set()),  # intervals overlap: no mark
        ([row("a", 100, 153), row("b", 150, 153), row("c", 98, 153)], {(1, "accuracy")}),
        # a perfect 4-image run beside a 153-image run on other data: never compared, never marked
        ([row("tiny", 4, 4, data="/data/pools/test"), row("big", 100, 153)], set()),
        ([row("a", 150, 153, split="cv"), row("b", 100, 153)], set()),  # same folder, other split: other images
    ],
)
def test_best_is_marked_only_against_runs_on_the_same_images_and_only_when_intervals_separate(rows, marked):
    assert best_cells(rows) == marked


def test_the_table_shows_the_data_and_intervals_and_the_notes_say_what_cannot_be_compared():
    rows = [row("tiny", 4, 4, data="/data/pools/test"), row("big", 148, 153)]
    table = markdown_table(rows).splitlines()
    low, high = wilson_interval(148, 153)
    assert "| data " in table[0] and "pools/test" in table[2] and "ants/val" in table[3]
    assert f"96.7% ({100 * low:.1f}–{100 * high:.1f})" in table[3] and "100.0% (51.0–100.0)" in table[2]
    assert comparison_notes(rows) == [
        "these runs were judged on 2 different sets of images (the data, split and images columns): compare "
        "figures only between runs on the same set",
        "no run's accuracy interval lies above the others' on the same images: none is marked best",
    ]
    assert comparison_notes([row("a", 150, 153), row("b", 100, 153)]) == []
