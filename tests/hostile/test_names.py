"""Hostile and careless names: class and file names holding `$`, HTML, spreadsheet formulas, ANSI escapes,
right-to-left overrides or bytes that are not UTF-8 train, predict and report without crashing; HTML stays
escaped, CSV cells are neutralised, figures render names literally and terminal output is stripped of
control characters."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tlearn
from helpers import TINY_BACKBONE, colour_image, run_cli, tiny_backbone_weights
from tlearn.report import figures
from tlearn.report.compare import RunSummary, markdown_table
from tlearn.util import atomic
from tlearn.util.text import printable

ESC = "\x1b"
NOT_UTF8 = os.fsdecode(b"caf\xe9")  # how Python names a file whose name holds the Latin-1 byte 0xE9
HTML_CLASS = "<img src=x onerror=alert(1)><script>alert(2)"  # a folder name cannot hold "/", so no </script>
MATH_CLASS = f"$^$ {ESC}[31mred{ESC}[0m \u202egnp.exe"  # invalid mathtext, an ANSI colour, a right-to-left override
FILE_NAMES = [
    f"{NOT_UTF8}_{{}}.png",
    "=cmd|' /C calc'!A0_{}.png".replace("/", "_"),
    f"{ESC}[2J_{{}}.png",
    "\u202e{}gnp.png",
]


# --- the writers and printers themselves ------------------------------------------------------------------


def test_csv_cells_that_start_a_formula_are_neutralised_and_read_back_unchanged(tmp_path):
    rows = [
        {"path": '=HYPERLINK("http://evil")', "label": "+ve", "score": -0.5},
        {"path": "@SUM(A1)", "label": "-ve", "score": 0.25},
        {"path": "'quoted", "label": "\tcmd", "score": 1},
        {"path": f"a/{NOT_UTF8}.png", "label": "ants", "score": None},
    ]
    path = tmp_path / "rows.csv"
    atomic.write_csv(path, rows, ["path", "label", "score"])
    text = path.read_bytes().decode("utf-8")  # valid UTF-8 whatever the names held
    cells = list(csv.reader(io.StringIO(text)))
    assert [row[0][0] for row in cells[1:4]] == ["'", "'", "'"] and cells[1][1] == "'+ve" and cells[2][1] == "'-ve"
    assert cells[1][2] == "-0.5"  # numbers are data, not formulas
    back = atomic.read_csv(path)
    assert [row["path"] for row in back] == [row["path"] for row in rows]
    assert [row["label"] for row in back] == [row["label"] for row in rows]


def test_json_and_text_files_accept_names_that_are_not_utf8(tmp_path):
    atomic.write_json(tmp_path / "names.json", {"files": [f"{NOT_UTF8}.jpg"]})
    raw = (tmp_path / "names.json").read_bytes()
    assert json.loads(raw.decode("utf-8"))["files"] == [f"{NOT_UTF8}.jpg"]  # strict UTF-8, exact round trip
    atomic.write_text(tmp_path / "page.html", f"<p>{NOT_UTF8}</p>")
    assert (tmp_path / "page.html").read_text(encoding="utf-8") == "<p>caf\\udce9</p>"


@pytest.mark.parametrize(
    "name, shown",
    [
        (f"{ESC}[31mred{ESC}[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\rb\nc", "a\\x0db\\x0ac"),
        ("\u202egnp.exe", "\\u202egnp.exe"),
        (f"{NOT_UTF8}.jpg", "caf\\xe9.jpg"),
        ("ants é 日本 🐜", "ants é 日本 🐜"),
    ],
)
def test_terminal_text_shows_control_characters_as_escapes(name, shown):
    assert printable(name) == shown
    printable(name).encode("utf-8")  # always printable on a UTF-8 terminal


def test_figures_never_parse_names_as_mathtext(monkeypatch):
    def no_mathtext(*args, **kwargs):
        raise AssertionError("a name went through mathtext")

    monkeypatch.setattr("matplotlib.mathtext.MathTextParser.parse", no_mathtext)
    names = ["$^$", "cost $5 and $6", "a_b^c"]
    png = figures.confusion_matrix_figure(np.eye(3, dtype=int), names, normalise=True)
    assert png[:4] == b"\x89PNG"
    history = [
        {"epoch": 0, "stage": "$^$", "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1, "val_accuracy": 0.5}
    ]
    assert figures.training_curves(history)[:4] == b"\x89PNG"


def test_the_compare_table_keeps_its_columns_whatever_the_run_is_called():
    summary = RunSummary(f"runs/a|b{ESC}[2J", "lite0", "linear", 0, 1.0, "test", 4, 1.0, 1.0, 0.0, 10**6)
    table = markdown_table([summary, RunSummary("runs/plain\\", *list(vars(summary).values())[1:])])
    assert ESC not in table
    cells_per_row = {len(row.replace("\\\\", "").replace("\\|", "").split("|")) for row in table.splitlines()}
    assert cells_per_row == {14}  # 12 columns between 13 borders, in every row


# --- end to end: train, report and predict on hostile names --------------------------------------------------


def train_tiny(data: Path, root: Path) -> tlearn.Run:
    """A linear head on the tiny test backbone (seconds), written to root/run with its report."""
    weights = tiny_backbone_weights(root)
    return tlearn.train(data, out=root / "run", backbone=TINY_BACKBONE, weights=weights, mode="linear", quiet=True)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A run trained on class folders and files named as an attacker or a careless user would name them."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    for index, (name, colour, shape) in enumerate(
        [(HTML_CLASS, (220, 30, 30), "square"), (MATH_CLASS, (30, 30, 220), "circle")]
    ):
        (data / name).mkdir(parents=True)
        for n in range(16):
            file_name = FILE_NAMES[n % len(FILE_NAMES)].format(n)
            colour_image(colour, size=48, seed=100 * index + n, shape=shape).save(data / name / file_name, "PNG")
    outside = root / "outside.png"
    shutil.copy(data / HTML_CLASS / FILE_NAMES[0].format(0), outside)
    os.symlink(outside, data / HTML_CLASS / "stray.png")
    return data, train_tiny(data, root).path


def test_training_on_hostile_names_writes_valid_files_that_read_back(hostile_run):
    _, run = hostile_run
    for path in run.rglob("*"):
        if path.suffix in (".json", ".csv", ".html", ".yaml"):
            path.read_bytes().decode("utf-8")  # strict: every artefact is valid UTF-8
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    relpaths = {relpath for split in splits.values() for relpath in split}
    expected = {f"{name}/{FILE_NAMES[n % 4].format(n)}" for name in (HTML_CLASS, MATH_CLASS) for n in range(16)}
    assert relpaths == expected  # exact, including the names that are not UTF-8
    predictions = atomic.read_csv(run / "predictions.csv")
    assert predictions and {row["path"] for row in predictions} <= expected
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    assert any(note.startswith(f"{HTML_CLASS}/stray.png (symbolic link leading outside") for note in report["ignored"])


def test_the_report_escapes_html_and_renders_every_name(hostile_run, browser):
    _, run = hostile_run
    tlearn.write_report(run)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)" in html
    assert (run / "figures" / "confusion_counts.png").read_bytes()[:4] == b"\x89PNG"
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto((run / "report.html").as_uri())
        assert HTML_CLASS in page.inner_text("body")  # shown as text, not run
        assert dialogs == []
    finally:
        page.close()


@pytest.mark.parametrize("output_format", ["table", "json", "csv"])
def test_predict_prints_hostile_names_safely_in_every_format(hostile_run, capsys, monkeypatch, output_format):
    data, run = hostile_run
    formula = FILE_NAMES[1].format(1)  # given relative to the working folder, its source starts with "="
    monkeypatch.chdir(data / HTML_CLASS)
    code, out, err = run_cli(capsys, "predict", run, data, formula, "--format", output_format, "--workers", "0", "-q")
    assert code == 0, err
    assert ESC not in out and "\u202e" not in out and "\r" not in out
    if output_format == "json":
        sources = [item["source"] for item in json.loads(out)]
        assert any(source.endswith(f"{NOT_UTF8}_0.png") for source in sources)  # JSON's own escape, exact
    elif output_format == "csv":
        rows = list(csv.reader(io.StringIO(out)))
        assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
        assert [row[0] for row in rows if row[0].startswith(f"'{formula}")] == [f"'{formula}"] * 2  # top-2 rows
        assert any("caf\\xe9_0.png" in row[0] for row in rows)
        assert any(row[2].startswith("'") or row[2].startswith("<") for row in rows[1:])
    else:
        # 32 images, the outside link (predict follows links: nothing is learnt from them) and `formula` again
        assert "caf\\xe9_0.png" in out and "\\x1b[31mred" in out and len(out.splitlines()) == 34


def test_class_names_that_start_like_a_formula_train_and_report(tmp_path):
    data = tmp_path / "data"
    for index, name in enumerate(["+ve", "-ve"]):  # real class names in medical data sets
        (data / name).mkdir(parents=True)
        for n in range(12):
            colour = (220, 30, 30) if index else (30, 30, 220)
            colour_image(colour, size=48, seed=10 * index + n).save(data / name / f"{n}.png")
    run = train_tiny(data, tmp_path)
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert "+ve" in html and "-ve" in html
