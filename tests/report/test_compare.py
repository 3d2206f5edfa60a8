"""`tlearn compare`: runs side by side in the terminal, as Markdown and as HTML."""

from __future__ import annotations

import tlearn
from helpers import run_cli


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
    code, _, _ = run_cli(capsys, "compare", plain.path, finer.path, "--out", tmp_path / "table.html")
    html = (tmp_path / "table.html").read_text()
    assert code == 0 and html.count("<tr>") == 3 and str(finer.path) in html


def test_compare_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compare", tmp_path)
    assert code == 2 and "no metrics.json" in err
