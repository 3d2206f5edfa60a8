"""Labels from a CSV / JSON / JSONL file: the same images, splits and model as the equivalent class folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tlearn
from helpers import make_class_folder, run_cli
from tlearn.data.checks import check_data
from tlearn.data.discovery import discover, discover_for_evaluation
from tlearn.data.label_files import is_label_file, read_label_file
from tlearn.errors import DataError
from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL


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
        ("red/img_000.png", "red", "train"),
        ("red/missing.png", "red"),  # line 3
        ("red/img_001.png", ""),  # line 4
        ("red/img_002.png", "red|blue"),  # line 5: several labels (kept: multi-label)
        ("red/img_000.png", "blue", "test"),  # line 6: another label, but another split
        ("blue/img_000.png", "blue", "sometimes"),  # line 7: unknown split
        ("red/img_000.png", "red"),  # line 8: the same (path, label) again
        ("", "red"),  # line 9: no path
        *((f"blue/img_{n:03d}.png", "blue", "") for n in (1, 2, 3)),
    ]
    labels = _write_csv(data / "labels.csv", rows, header="path,label,split")
    found, problems = read_label_file(labels)
    assert [(row.relpath, row.labels, row.split) for row in found] == [
        ("red/img_000.png", ("red",), "train"),
        ("red/img_002.png", ("red", "blue"), None),
        *((f"blue/img_{n:03d}.png", ("blue",), None) for n in (1, 2, 3)),
    ]
    assert [problem.split(": ", 1)[0] for problem in problems] == [f"{labels} line {n}" for n in (3, 4, 6, 7, 8, 9)]
    assert problems[0] == f"{labels} line 3: red/missing.png: no such file; row left out"
    assert problems[1] == f"{labels} line 4: red/img_001.png: no label; row left out"
    assert problems[2] == f"{labels} line 6: red/img_000.png: split 'test' here but 'train' at line 2; row left out"
    assert problems[3] == (
        f"{labels} line 7: blue/img_000.png: unknown split 'sometimes' (expected train, val or test); row left out"
    )
    assert problems[4] == f"{labels} line 8: red/img_000.png: label 'red' (first at line 2) given again; kept once"
    assert problems[5] == f"{labels} line 9: no path; row left out"


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


def _labels_of(source) -> dict[str, tuple[str, ...]]:
    return {image.relpath: image.labels for image in source.images}


def _write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))  # bytes: the line endings stay as written
    return path


def test_csv_spaces_around_cells_and_in_names_with_crlf(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 2})
    (data / "red" / "img_000.png").rename(data / "red" / "my photo.png")
    (data / "blue" / "img_000.png").rename(data / "blue" / "a, b.png")
    text = (
        "\ufeff Path , Label , Split \r\n"
        "  red/my photo.png ,  red  , train \r\n"
        'blue\\img_001.png, "blue , red" ,val\r\n'  # a quoted cell after a space: one label, not two
        "red/img_001.png,red, TRAIN\r\n"
        ' "blue/a, b.png" , blue ,\r\n'
    )
    found, problems = read_label_file(_write_text(data / "labels.csv", text))
    assert problems == []
    assert [(row.relpath, row.labels, row.split) for row in found] == [
        ("red/my photo.png", ("red",), "train"),
        ("blue/img_001.png", ("blue , red",), "val"),
        ("red/img_001.png", ("red",), "train"),
        ("blue/a, b.png", ("blue",), None),
    ]
    assert found[0].path == data / "red" / "my photo.png" and found[0].path.is_file()


@pytest.mark.parametrize(
    "header, missing",
    [("file,label", "path"), ("path,class", "label"), ("image;tag", "path, label"), ("", "path, label")],
)
def test_missing_columns_are_one_line_errors_naming_the_file(tmp_path, header, missing):
    labels = _write_text(tmp_path / "labels.csv", f"{header}\nred/img_000.png,red\n" if header else "")
    with pytest.raises(DataError) as caught:
        read_label_file(labels)
    message = str(caught.value)
    assert message == f"{labels}: missing column(s) {missing}; expected a header such as path,label[,split]"
    assert "\n" not in message


def _multilabel_listing(data: Path) -> dict[str, tuple[str, ...]]:
    """red images 0-3 are also 'round', blue images 0-1 also 'round' and 'big'; the rest carry one label."""
    expected = {relpath: (label,) for relpath, label in _listing(data)}
    for n in range(4):
        expected[f"red/img_{n:03d}.png"] = ("red", "round")
    for n in range(2):
        expected[f"blue/img_{n:03d}.png"] = ("blue", "round", "big")
    return expected


def test_multilabel_cells_rows_custom_separator_and_json_lists_agree(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 8, "blue": 8})
    expected = _multilabel_listing(data)
    piped = _write_csv(data / "piped.csv", [(path, f'"{"|".join(labels)}"') for path, labels in expected.items()])
    semicolons = _write_csv(data / "semi.csv", [(path, ";".join(labels)) for path, labels in expected.items()])
    repeated = _write_csv(data / "rows.csv", [(path, label) for path, labels in expected.items() for label in labels])
    listed = data / "labels.json"
    listed.write_text(json.dumps([{"path": path, "label": list(labels)} for path, labels in expected.items()]))
    sources = [discover(piped), discover(semicolons, label_sep=";"), discover(repeated), discover(listed)]
    for source in sources:
        assert _labels_of(source) == expected
        assert source.classes == ["big", "blue", "red", "round"]
        assert source.has_label_sets and source.problems == []
    assert _as_rows(sources[0]) == _as_rows(sources[1]) == _as_rows(sources[2]) == _as_rows(sources[3])
    # The separator matters: read with the default one, 'red;round' is a single label of its own.
    assert _labels_of(discover(semicolons))["red/img_000.png"] == ("red;round",)


def test_multilabel_images_keep_the_stable_hash_split_of_the_class_folder(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 10, "blue": 10})
    expected = _multilabel_listing(data)
    multi = discover(_write_csv(data / "labels.csv", [(path, "|".join(labels)) for path, labels in expected.items()]))
    folder = discover(data)
    assert {image.relpath: image.split for image in multi.images} == {
        image.relpath: image.split for image in folder.images
    }
    assert {image.relpath: image.label for image in multi.images} == {
        image.relpath: image.label for image in folder.images
    }
    # Given only train rows, val is carved out of them by the same hash, labels and all.
    rows = [(path, "|".join(labels), "train") for path, labels in expected.items()]
    carved = discover(_write_csv(data / "train.csv", rows, header="path,label,split"))
    assert _labels_of(carved) == expected and len(carved.in_split("val")) > 0
    assert any(len(image.labels) > 1 for image in carved.in_split("val"))


def test_rows_of_one_image_merge_in_first_seen_order_and_inherit_a_given_split(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 2})
    rows = [
        ("red/img_000.png", "zebra", ""),
        ("blue/img_000.png", "blue", "test"),
        ("red/img_000.png", "red|apple", "val"),  # an empty split before: this one is taken
        ("red/img_000.png", "zebra", "val"),  # line 5: the same (path, label) again
        ("blue/img_000.png", "red", "train"),  # line 6: conflicting split
        ("red/img_001.png", "red|red", ""),  # line 7: repeated inside one cell
    ]
    labels = _write_csv(data / "labels.csv", rows, header="path,label,split")
    found, problems = read_label_file(labels)
    assert [(row.relpath, row.labels, row.split) for row in found] == [
        ("red/img_000.png", ("zebra", "red", "apple"), "val"),
        ("blue/img_000.png", ("blue",), "test"),
        ("red/img_001.png", ("red",), None),
    ]
    assert problems == [
        f"{labels} line 5: red/img_000.png: label 'zebra' (first at line 2) given again; kept once",
        f"{labels} line 6: blue/img_000.png: split 'train' here but 'test' at line 3; row left out",
        f"{labels} line 7: red/img_001.png: label 'red' (first at line 7) given again; kept once",
    ]


def test_multiclass_task_leaves_out_images_with_several_labels(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 4, "blue": 4})
    rows = [
        ("red/img_000.png", "red"),
        ("red/img_001.png", "red|blue"),  # line 3: several labels in one cell
        ("red/img_000.png", "blue"),  # line 4: a second label for line 2's image
        ("red/img_000.png", "red"),  # line 5: an image already left out
        *((f"red/img_{n:03d}.png", "red") for n in (2, 3)),
        *((f"blue/img_{n:03d}.png", "blue") for n in range(4)),
    ]
    labels = _write_csv(data / "labels.csv", rows)
    found, problems = read_label_file(labels, task="multiclass")
    assert [row.relpath for row in found] == ["red/img_002.png", "red/img_003.png"] + [
        f"blue/img_{n:03d}.png" for n in range(4)
    ]
    assert all(len(row.labels) == 1 for row in found)
    advice = "but --task multiclass takes one per image; use --task multilabel, or keep one label; image left out"
    assert problems == [
        f"{labels} line 3: red/img_001.png: several labels (red, blue) {advice}",
        f"{labels} line 4: red/img_000.png: several labels (red, blue) {advice}",
        f"{labels} line 5: red/img_000.png: already left out at line 4 (several labels); row left out",
    ]
    source = discover(labels, task="multiclass")
    assert not source.has_label_sets and source.problems == problems and len(source.images) == 6
    evaluated, _ = discover_for_evaluation(labels, task="multiclass")
    assert sorted(image.relpath for image in evaluated.images) == sorted(row.relpath for row in found)
    # "auto" and "multilabel" keep both images with their two labels.
    for task in ("auto", "multilabel"):
        kept = _labels_of(discover(labels, task=task))
        assert kept["red/img_000.png"] == kept["red/img_001.png"] == ("red", "blue")


def test_evaluation_reads_a_custom_separator(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 3})
    rows = [(path, f"{label};shape") for path, label in _listing(data)]
    labels = _write_csv(data / "labels.csv", rows)
    evaluated, chosen = discover_for_evaluation(labels, label_sep=";")
    assert chosen == "all" and evaluated.classes == ["blue", "red", "shape"]
    assert {image.labels for image in evaluated.images} == {("red", "shape"), ("blue", "shape")}


def test_single_label_file_is_not_multilabel(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 3})
    source = discover(_write_csv(data / "labels.csv", _listing(data)))
    assert not source.has_label_sets
    assert all(image.extra_labels == () for image in source.images)


def test_a_class_that_is_only_ever_a_second_label_counts_as_trained(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 4, "blue": 4})
    rows = [(path, f"{label}|round" if label == "red" else label, "train") for path, label in _listing(data)]
    rows += [("red/img_004.png", "red", "val"), ("blue/img_004.png", "blue", "val")]
    make_class_folder(data, {"red": 1, "blue": 1}, start=4)
    source = discover(_write_csv(data / "labels.csv", rows, header="path,label,split"))
    assert source.classes == ["blue", "red", "round"]
    assert sum("round" in image.labels for image in source.in_split("train")) == 4
    assert not any("round" in image.labels for image in source.in_split("val"))


def test_checked_multilabel_data_counts_every_label(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 4, "blue": 4})
    rows = [
        (path, f"{label}|round" if path.endswith(("_000.png", "_001.png")) else label, "train")
        for path, label in _listing(data)
    ]
    rows += [("red/img_003.png", "red", "val"), ("blue/img_003.png", "blue|round", "val")]
    rows = [row for row in rows if not (row[0].endswith("_003.png") and row[2] == "train")]
    source = discover(_write_csv(data / "labels.csv", rows, header="path,label,split"))
    checked = check_data(source, [f"hash-{n}" for n in range(len(source.images))], {})
    assert source.classes == ["blue", "red", "round"]
    assert checked.counts("train") == {"blue": 3, "red": 3, "round": 4}
    assert checked.counts("val") == {"blue": 1, "red": 1, "round": 1}
    assert checked.report["counts"]["train"] == {"blue": 3, "red": 3, "round": 4}
    assert checked.report["imbalance"]["majority"] == "round" and checked.report["imbalance"]["ratio"] == 1.333
    assert checked.relpaths("val") == ["red/img_003.png", "blue/img_003.png"]
    assert checked.label_indices("val") == [(1,), (0, 2)]  # every label an image carries, its first first
    assert MULTI_LABEL.targets(checked.label_indices("val"), 3).tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    train = dict(zip(checked.relpaths("train"), checked.label_indices("train"), strict=True))
    assert train["red/img_000.png"] == (1, 2) and train["blue/img_002.png"] == (0,)
    assert SINGLE_LABEL.targets(checked.label_indices("val"), 3).tolist() == [1, 0]  # the first label's index


def test_identical_copies_conflict_only_when_their_label_sets_differ(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 4, "blue": 4})
    # The copies stay in train ('round' has no other image, and a class needs training images).
    rows = [("red/img_000.png", "red|round", "train"), ("red/img_001.png", "round|red", "train")]
    rows += [("red/img_002.png", "red", "train")]
    listed = {"red/img_000.png", "red/img_001.png", "red/img_002.png"}
    rows += [(*row, "") for row in _listing(data) if row[0] not in listed]
    source = discover(_write_csv(data / "labels.csv", rows, header="path,label,split"))
    position = {image.relpath: n for n, image in enumerate(source.images)}
    hashes = [f"hash-{n}" for n in range(len(source.images))]
    hashes[position["red/img_001.png"]] = hashes[position["red/img_000.png"]]  # the same set, in another order
    agreeing = check_data(source, hashes, {}).report
    assert len(agreeing["duplicates"]) == 1 and agreeing["label_conflicts"] == []
    assert agreeing["duplicates"][0]["labels"] == ["red", "round"]
    hashes[position["red/img_002.png"]] = hashes[position["red/img_000.png"]]  # a copy without 'round'
    conflicting = check_data(source, hashes, {}).report
    assert conflicting["label_conflicts"] == conflicting["duplicates"] and len(conflicting["duplicates"]) == 1


def test_training_passes_the_separator_and_task_to_the_label_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_class_folder(tmp_path / "data", {"red": 8, "blue": 8})
    rows = [(path, f"{label};blue" if path == "red/img_000.png" else label) for path, label in _listing(data)]
    labels = _write_csv(data / "labels.csv", rows)
    tlearn.train(labels, out=tmp_path / "run", mode="linear", quiet=True, label_sep=";", task="multiclass")
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["label_file_problems"] == [
        f"{labels.resolve()} line 10: red/img_000.png: several labels (red, blue) but --task multiclass takes one "
        "per image; use --task multilabel, or keep one label; image left out"
    ]
    assert sum(sum(table.values()) for table in report["counts"].values()) == 15


def test_a_label_file_is_told_by_its_suffix_in_any_case_and_a_folder_never_is(tmp_path):
    """`tlearn train X` reads X as a label file for a .csv/.json/.jsonl name in any case, never for a folder."""
    (tmp_path / "photos.csv").mkdir()
    assert is_label_file(tmp_path / "LABELS.CSV") and is_label_file(str(tmp_path / "labels.JsonL"))
    assert is_label_file(tmp_path / "labels.json")
    assert not is_label_file(tmp_path / "photos.csv")  # a data folder that happens to be named so
    assert not is_label_file(tmp_path / "data") and not is_label_file(tmp_path / "labels.txt")


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "labels.jsonl",
            '{"path": "red/img_000.png", "label": "red"}\n{oops\n',
            "{path} line 2: not valid JSON (Expecting property name enclosed in double quotes)",
        ),
        ("labels.json", '[{"path": "red/img_000.png",\n "label": "red"},\n oops]', "{path}: not valid JSON (Expecting"),
        (
            "labels.json",
            '{"path": "red/img_000.png", "label": "red"}',
            "{path}: expected a JSON list of {{'path': ..., 'label': ...}} objects",
        ),
        ("labels.csv", b"path,label\nred/img\xff.png,red\n", "{path}: cannot read the label file ('utf-8' codec"),
        ("labels.csv", "path," + "x" * 200_000 + "\n", "{path}: not a readable CSV header (field larger than"),
        ("labels.csv", "path,label\n" + "x" * 200_000 + ",red\n", "{path} line "),
    ],
)
def test_unreadable_label_files_are_one_line_errors_naming_the_file_and_the_fault(tmp_path, name, content, message):
    """A label file that cannot be parsed as a whole stops the run with one line saying which file and why."""
    labels = tmp_path / name
    labels.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DataError) as caught:
        read_label_file(labels)
    text = str(caught.value)
    assert text.startswith(message.format(path=labels)) and "\n" not in text and len(text) < 300
    if name == "labels.json" and "oops" in content:
        assert text == f"{labels}: not valid JSON (Expecting value at line 3)"  # the line of the fault
    if name == "labels.csv" and text.startswith(f"{labels} line "):  # a row over the csv module's field limit
        assert text.endswith("not valid CSV (field larger than field limit (131072))")


def test_a_missing_label_file_and_bad_options_are_refused_before_reading(tmp_path):
    """A missing file is the user's DataError; an empty separator or unknown task is a ValueError (checked first)."""
    (tmp_path / "folder.csv").mkdir()
    for missing in (tmp_path / "none.csv", tmp_path / "folder.csv"):
        with pytest.raises(DataError) as caught:
            read_label_file(missing)
        assert str(caught.value) == f"{missing}: no such label file"
    labels = _write_csv(tmp_path / "labels.csv", [("a.png", "red")])
    with pytest.raises(ValueError, match=r"^label_sep must not be empty$"):
        read_label_file(labels, label_sep="")
    with pytest.raises(ValueError) as caught:
        read_label_file(labels, task="binary")
    assert str(caught.value) == "unknown task 'binary'; expected one of auto, multiclass, multilabel"


def test_json_items_that_are_not_usable_rows_are_problems_with_their_item_or_line_number(tmp_path):
    """Each unusable JSON / JSONL entry (not an object, no path, no label) is one problem; the rest are read."""
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 1})
    entries = [
        {"path": "red/img_000.png", "label": ["red", None, " round ", ""]},  # a JSON list: nulls and blanks dropped
        ["red/img_001.png", "red"],  # 2: not an object
        {"path": "red/img_001.png"},  # 3: no label
        {"path": 7, "label": "red"},  # 4: the path is not text
        {"path": "red/img_002.png", "label": None},  # 5: a null label
        {"path": "blue/img_000.png", "label": "blue", "split": " Validation "},
    ]
    expected_rows = [("red/img_000.png", ("red", "round"), None), ("blue/img_000.png", ("blue",), "val")]
    reasons = {2: "no path", 3: "red/img_001.png: no label", 4: "no path", 5: "red/img_002.png: no label"}
    listed = data / "labels.json"
    listed.write_text(json.dumps(entries))
    found, problems = read_label_file(listed)
    assert [(row.relpath, row.labels, row.split) for row in found] == expected_rows
    assert problems == [f"{listed} item {n}: {reason}; row left out" for n, reason in reasons.items()]
    # JSONL: blank lines are skipped but counted, so each problem names the line it is on.
    lines = [json.dumps(entries[0]), "", *(json.dumps(entry) for entry in entries[1:])]
    per_line = _write_text(data / "labels.jsonl", "\n".join(lines) + "\n")
    found, problems = read_label_file(per_line)
    assert [(row.relpath, row.labels, row.split) for row in found] == expected_rows
    assert problems == [f"{per_line} line {n + 1}: {reason}; row left out" for n, reason in reasons.items()]


def test_a_csv_row_missing_its_label_cell_is_a_problem_row(tmp_path):
    """A short CSV row (no label cell at all) is left out with "no label", as an empty cell is."""
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 2})
    labels = _write_text(data / "labels.csv", "path,label\nred/img_000.png\nred/img_001.png,red\n")
    found, problems = read_label_file(labels)
    assert [row.relpath for row in found] == ["red/img_001.png"]
    assert problems == [f"{labels} line 2: red/img_000.png: no label; row left out"]


def test_paths_resolve_against_the_label_files_folder_home_or_anywhere_when_allowed(tmp_path, monkeypatch):
    """Relative paths (`..` included) resolve against the label file's folder and `~` against the home folder; an
    image outside the folder is read only with follow_links, and keeps its whole path as the hash split's key."""
    monkeypatch.setenv("HOME", str(tmp_path))
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 1})
    rows = [
        ("~/data/red/img_000.png", "red"),
        ("lists/../red/img_001.png", "red"),
        ("../data/red/img_002.png", "red"),
        (str(tmp_path / "data" / "lists" / ".." / "blue" / "img_000.png"), "blue"),
    ]
    found, problems = read_label_file(_write_csv(data / "labels.csv", rows))
    assert problems == []
    assert [row.relpath for row in found] == [
        "red/img_000.png",
        "red/img_001.png",
        "red/img_002.png",
        "blue/img_000.png",
    ]
    assert [row.path for row in found] == [
        data / f"{name}.png" for name in ("red/img_000", "red/img_001", "red/img_002", "blue/img_000")
    ]
    elsewhere = make_class_folder(tmp_path / "elsewhere", {"green": 1})
    outside = _write_csv(data / "outside.csv", [("../elsewhere/green/img_000.png", "green")])
    found, problems = read_label_file(outside, follow_links=True)
    assert problems == [] and found[0].relpath == (elsewhere / "green" / "img_000.png").as_posix()
    assert found[0].path == elsewhere / "green" / "img_000.png" and found[0].label == "green"


def test_rows_naming_files_outside_the_label_files_folder_are_left_out_unless_allowed(tmp_path):
    """A label file from elsewhere must not make tlearn read (and show in its report) any image on the machine:
    `..`, absolute paths and links inside the folder that lead out of it are all outside."""
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 2})
    private = make_class_folder(tmp_path / "private", {"me": 2})
    (data / "red" / "link.png").symlink_to(private / "me" / "img_001.png")
    rows = [
        ("red/img_000.png", "red"),
        ("../private/me/img_000.png", "red"),
        (str(private / "me" / "img_001.png"), "blue"),
        ("red/link.png", "red"),
        ("blue/img_000.png", "blue"),
    ]
    labels = _write_csv(data / "labels.csv", rows)
    found, problems = read_label_file(labels)
    assert [row.relpath for row in found] == ["red/img_000.png", "blue/img_000.png"]
    assert len(problems) == 3
    for line, (name, _) in zip((3, 4, 5), rows[1:4], strict=True):
        reason = f"outside {data} (the label file's folder; follow_links=True reads it); row left out"
        assert f"{labels} line {line}: {name}: {reason}" in problems
    allowed, none = read_label_file(labels, follow_links=True)
    assert len(allowed) == 5 and none == []


def test_a_backslash_is_a_windows_separator_unless_a_file_has_that_very_name(tmp_path):
    """On POSIX a file may be named `a\\b.png`: a row naming that existing file is that file, not `a/b.png`."""
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 1})
    (data / "red" / "img_000.png").rename(data / "red\\odd.png")
    (data / "red" / "odd.png").write_bytes((data / "red" / "img_001.png").read_bytes())
    rows = [(str(data / "red\\odd.png"), "red"), ("red\\img_001.png", "red")]
    found, problems = read_label_file(_write_csv(data / "labels.csv", rows))
    assert problems == []
    assert [row.relpath for row in found] == ["red\\odd.png", "red/img_001.png"]


def test_a_repeated_split_keeps_where_it_was_first_given_and_repeats_name_every_label(tmp_path):
    """A conflicting split names the line where the image's split was first given; a repeated row names each of
    its repeated labels with the line that first gave it."""
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 2})
    rows = [
        ("red/img_000.png", "red|round", "train"),
        ("red/img_000.png", "shiny", "train"),  # the same split again: it was given at line 2
        ("red/img_000.png", "red|round", ""),  # line 4: both labels again
        ("red/img_000.png", "blue", "test"),  # line 5: conflicts with line 2's split
        *((f"blue/img_{n:03d}.png", "blue", "") for n in range(2)),
    ]
    labels = _write_csv(data / "labels.csv", rows, header="path,label,split")
    found, problems = read_label_file(labels)
    assert (found[0].relpath, found[0].labels, found[0].split) == (
        "red/img_000.png",
        ("red", "round", "shiny"),
        "train",
    )
    assert problems == [
        f"{labels} line 4: red/img_000.png: label 'red' (first at line 2), 'round' (first at line 2) given again; "
        "kept once",
        f"{labels} line 5: red/img_000.png: split 'test' here but 'train' at line 2; row left out",
    ]


def test_rows_left_out_are_said_on_the_console_and_kept_in_the_report_of_training_and_evaluation(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", {"red": 8, "blue": 8})
    labels = _write_csv(data / "labels.csv", [*_listing(data), ("red/missing.png", "red"), ("blue/img_000.png", "")])
    code, _, err = run_cli(capsys, "train", labels, "--out", tmp_path / "run", "--mode", "linear")
    assert code == 0 and f"left out 2 row(s) of {labels.resolve()}: " in err and "and 1 more; see data_report" in err
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "run", labels, "--out", tmp_path / "eval")
    assert code == 0 and f"left out 2 row(s) of {labels.resolve()}: " in err
    trained = json.loads((tmp_path / "run" / "data_report.json").read_text())["label_file_problems"]
    evaluated = json.loads((tmp_path / "eval" / "data_report.json").read_text())["label_file_problems"]
    assert len(evaluated) == 2 and evaluated == trained
