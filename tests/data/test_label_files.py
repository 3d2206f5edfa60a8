"""Labels from a CSV / JSON / JSONL file: the same images, splits and model as the equivalent class folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tlearn
from helpers import make_class_folder, run_cli
from tlearn.data.discovery import discover, discover_for_evaluation
from tlearn.data.label_files import read_label_file
from tlearn.errors import DataError


def _as_rows(source) -> set[tuple[str, str, str]]:
    return {(image.relpath, image.label, image.split) for image in source.images}


def _listing(data: Path) -> list[tuple[str, str]]:
    return [(f"{image.parent.name}/{image.name}", image.parent.name) for image in sorted(data.glob("*/*.png"))]


def _write_csv(path: Path, rows: list[tuple[str, ...]], header: str = "path,label", *, bom: bool = False) -> Path:
    lines = [header, *(",".join(row) for row in rows)]
    path.write_text(("\ufeff" if bom else "") + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def test_a_csv_gives_the_same_splits_and_model_as_the_class_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_class_folder(tmp_path / "data", {"red": 12, "blue": 12})
    labels = _write_csv(data / "labels.csv", _listing(data))
    assert _as_rows(discover(labels)) == _as_rows(discover(data))
    by_folder = tlearn.train(data, out=tmp_path / "folder", mode="linear", quiet=True)
    by_file = tlearn.train(labels, out=tmp_path / "file", mode="linear", quiet=True)
    assert by_file.metrics == by_folder.metrics
    report = json.loads((tmp_path / "file" / "data_report.json").read_text())
    assert report["layout"] == "label_file" and report["label_file_problems"] == []


def test_csv_edge_cases_bom_quotes_windows_paths_and_spaces(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 3})
    (data / "red" / "img_000.png").rename(data / "red" / "a, b.png")
    rows = [
        ('"red/a, b.png"', "red"),  # a quoted comma
        ("red\\img_001.png", " red "),  # a Windows separator, spaces around the label
        ("red/img_002.png", "red"),
        *((f"{(data / 'blue' / f'img_{n:03d}.png')}", "blue") for n in range(3)),  # absolute paths
    ]
    labels = _write_csv(data / "labels.csv", rows, header="Path,Label", bom=True)
    found, problems = read_label_file(labels)
    assert problems == []
    assert [(row.relpath, row.label) for row in found] == [
        ("red/a, b.png", "red"),
        ("red/img_001.png", "red"),
        ("red/img_002.png", "red"),
        *((f"blue/img_{n:03d}.png", "blue") for n in range(3)),
    ]


def test_problem_rows_are_listed_with_their_line_and_left_out(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 4, "blue": 4})
    rows = [
        ("red/img_000.png", "red"),
        ("red/missing.png", "red"),  # line 3
        ("red/img_001.png", ""),  # line 4
        ("red/img_002.png", "red|blue"),  # line 5: several labels
        ("red/img_000.png", "blue"),  # line 6: listed again, another label
        ("blue/img_000.png", "blue", "sometimes"),  # line 7: unknown split
        *((f"blue/img_{n:03d}.png", "blue", "") for n in (1, 2, 3)),
    ]
    labels = _write_csv(data / "labels.csv", rows, header="path,label,split")
    found, problems = read_label_file(labels)
    assert [row.relpath for row in found] == ["red/img_000.png", *(f"blue/img_{n:03d}.png" for n in (1, 2, 3))]
    assert [problem.split(": ", 1)[0] for problem in problems] == [f"{labels} line {n}" for n in (3, 4, 5, 6, 7)]
    assert "no such file" in problems[0] and "no label" in problems[1] and "several labels" in problems[2]
    assert "already listed at line 2" in problems[3] and "unknown split 'sometimes'" in problems[4]


def test_given_splits_are_kept_and_val_is_carved_from_train_when_absent(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 10, "blue": 10})
    rows = [(relpath, label, "test" if relpath.endswith("_000.png") else "train") for relpath, label in _listing(data)]
    source = discover(_write_csv(data / "labels.csv", rows, header="path,label,split"))
    splits = {image.relpath: image.split for image in source.images}
    assert splits["red/img_000.png"] == splits["blue/img_000.png"] == "test"
    assert {"train", "val"} <= set(splits.values()) and list(splits.values()).count("test") == 2
    evaluated, chosen = discover_for_evaluation(data / "labels.csv")
    assert chosen == "test" and sorted(image.relpath for image in evaluated.images) == [
        "blue/img_000.png",
        "red/img_000.png",
    ]


def test_json_and_jsonl_label_files(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 3})
    entries = [{"path": relpath, "label": label} for relpath, label in _listing(data)]
    (data / "labels.json").write_text(json.dumps(entries))
    (data / "labels.jsonl").write_text("\n".join(json.dumps(entry) for entry in entries) + "\n")
    assert (
        _as_rows(discover(data / "labels.json"))
        == _as_rows(discover(data / "labels.jsonl"))
        == _as_rows(discover(data))
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,class\nred/img_000.png,red\n", "missing column(s) path, label"),
        ("path,label\nred/img_000.png,red\nred/img_001.png,red\n", "need at least two labels"),
        ("path,label\nnowhere.png,red\n", "no usable rows (1 left out"),
    ],
)
def test_unusable_label_files_are_one_line_errors(tmp_path, capsys, content, message):
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 2})
    (data / "labels.csv").write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        discover(data / "labels.csv")
    code, _, err = run_cli(capsys, "train", data / "labels.csv", "--out", tmp_path / "run")
    assert code == 2 and message in err and err.count("\n") == 1
