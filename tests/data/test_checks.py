"""Duplicates, leakage exclusion and imbalance in the data report."""

from __future__ import annotations

import shutil

import pytest

from helpers import make_class_folder
from tlearn.backbones.cache import file_sha256
from tlearn.data.checks import check_data, found_line, summary_lines
from tlearn.data.discovery import discover


def _check(data, failures=None):
    source = discover(data)
    hashes = [file_sha256(image.path) for image in source.images]
    return check_data(source, hashes, failures or {})


def test_leaking_copies_are_excluded_from_evaluation(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    shutil.copy(tmp_path / "train" / "a" / "img_000.png", tmp_path / "val" / "a" / "copy.png")
    checked = _check(tmp_path)
    assert checked.report["leakage"] == [
        {"sha256": file_sha256(tmp_path / "val" / "a" / "copy.png"), "kept_in": "train", "excluded": ["val/a/copy.png"]}
    ]
    assert "val/a/copy.png" not in checked.relpaths("val") and len(checked.relpaths("val")) == 4
    assert any("leakage" in line for line in summary_lines(checked.report))


@pytest.mark.parametrize(("copy_in", "kept_in"), [("test", "train"), ("test", "val")])
def test_a_test_copy_of_a_train_or_val_image_is_excluded_from_the_test_figures(tmp_path, copy_in, kept_in):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    make_class_folder(tmp_path / "test", {"a": 2, "b": 2}, start=80)
    original = tmp_path / kept_in / "a" / ("img_000.png" if kept_in == "train" else "img_050.png")
    shutil.copy(original, tmp_path / copy_in / "a" / "copy.png")
    checked = _check(tmp_path)
    assert checked.report["leakage"] == [
        {"sha256": file_sha256(original), "kept_in": kept_in, "excluded": [f"{copy_in}/a/copy.png"]}
    ]
    assert f"{copy_in}/a/copy.png" not in checked.relpaths(copy_in) and len(checked.relpaths(copy_in)) == 4
    assert len(checked.relpaths(kept_in)) == (8 if kept_in == "train" else 4)  # the original stays where it is


def test_duplicates_and_label_conflicts_are_reported(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 3, "b": 3})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1}, start=50)
    shutil.copy(tmp_path / "train" / "a" / "img_000.png", tmp_path / "train" / "b" / "same_bytes.png")
    report = _check(tmp_path).report
    assert len(report["duplicates"]) == 1 and report["duplicates"][0]["labels"] == ["a", "b"]
    assert report["label_conflicts"] == report["duplicates"]


def test_imbalance_and_skipped(tmp_path):
    make_class_folder(tmp_path / "train", {"many": 12, "few": 3})
    make_class_folder(tmp_path / "val", {"many": 1, "few": 1}, start=50)
    checked = _check(tmp_path, failures={0: "truncated or corrupt image"})
    imbalance = checked.report["imbalance"]
    assert imbalance["imbalanced"] and imbalance["majority"] == "many" and imbalance["ratio"] > 3
    assert checked.report["skipped"] == [{"path": "train/few/img_000.png", "reason": "truncated or corrupt image"}]
    assert checked.counts("train") == {"few": 2, "many": 12}


def test_the_counts_found_before_the_checks_are_repeated_only_when_the_checks_change_them(tmp_path):
    """The console shows the classes and split sizes before embedding starts; after the checks it says
    "usable:" with the new counts when files were skipped, and nothing more when they agree."""
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    source = discover(tmp_path)
    announced = found_line(source)
    assert announced == "data: 2 classes (a, b); train 8, val 4 images"
    assert summary_lines(_check(tmp_path).report, announced) == []
    broken = {0: "not an image"}
    lines = summary_lines(_check(tmp_path, broken).report, announced)
    assert lines[0] == "usable: 2 classes (a, b); train 7, val 4 images" and lines[1].startswith("skipped 1 ")
    assert summary_lines(_check(tmp_path).report)[0] == announced  # without an announcement: the counts line


def test_a_validation_split_without_a_class_is_named_in_a_warning(tmp_path):
    """A split that lacks a class cannot measure it: the console says which, instead of a silent 100%."""
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4, "c": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    (tmp_path / "val" / "c").mkdir()
    warnings = [line for line in summary_lines(_check(tmp_path).report) if line.startswith("warning: val")]
    assert warnings == [
        "warning: val has no image of 1 class(es) (c): its figures do not measure them (accuracy can look better "
        "than macro F1 says)"
    ]
    make_class_folder(tmp_path / "val", {"c": 1}, start=90)
    assert not any(line.startswith("warning: val") for line in summary_lines(_check(tmp_path).report))
