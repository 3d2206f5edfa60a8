"""Duplicates, leakage exclusion and imbalance in the data report, and the console summary of it."""

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


def test_a_duplicate_lists_its_hash_paths_and_splits_in_split_order(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    make_class_folder(tmp_path / "test", {"a": 2, "b": 2}, start=80)
    original = tmp_path / "train" / "a" / "img_000.png"
    shutil.copy(original, tmp_path / "val" / "a" / "copy.png")
    shutil.copy(original, tmp_path / "test" / "a" / "copy.png")
    assert _check(tmp_path).report["duplicates"] == [
        {
            "sha256": file_sha256(original),
            "paths": ["train/a/img_000.png", "val/a/copy.png", "test/a/copy.png"],
            "splits": ["train", "val", "test"],  # train, val, test: not alphabetical
            "labels": ["a"],
        }
    ]


def test_a_copy_of_a_skipped_training_image_is_kept_for_evaluation(tmp_path):
    """Leakage means the model trained on the same bytes; a training file that was skipped taught it nothing."""
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    shutil.copy(tmp_path / "train" / "a" / "img_000.png", tmp_path / "val" / "a" / "copy.png")
    checked = _check(tmp_path, failures={0: "read timed out"})  # train/a/img_000.png
    assert checked.report["leakage"] == [] and checked.report["duplicates"] == []
    assert "val/a/copy.png" in checked.relpaths("val") and len(checked.relpaths("val")) == 5


@pytest.mark.parametrize(("many", "imbalanced"), [(3, False), (4, True)])
def test_the_loss_is_class_weighted_only_above_three_to_one(tmp_path, many, imbalanced):
    """README: "a class-weighted loss above 3:1": exactly 3:1 is still balanced."""
    make_class_folder(tmp_path / "train", {"many": many, "one": 1})
    make_class_folder(tmp_path / "val", {"many": 1, "one": 1}, start=50)
    imbalance = _check(tmp_path).report["imbalance"]
    assert imbalance == {"ratio": float(many), "majority": "many", "minority": "one", "imbalanced": imbalanced}


def test_a_class_whose_training_images_were_all_skipped_is_imbalanced_without_a_ratio(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 3, "b": 1})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1}, start=50)
    report = _check(tmp_path, failures={3: "not an image"}).report  # train/b/img_000.png
    assert report["imbalance"] == {"ratio": None, "majority": "a", "minority": "b", "imbalanced": True}
    assert [line for line in summary_lines(report) if "imbalance" in line] == [
        "class imbalance: b has no usable training image"
    ]


def test_the_report_names_the_data_folder_and_the_label_file(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 3})
    report = _check(data).report
    assert report["data"] == str(data) and "label_file" not in report
    labels = data / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{c}/img_00{n}.png,{c}\n" for c in ("red", "blue") for n in range(3)))
    report = _check(labels).report
    assert report["label_file"] == str(labels) and report["label_file_problems"] == []


def _lines(data, failures=None, prefix=""):
    return [line for line in summary_lines(_check(data, failures).report) if line.startswith(prefix)]


def test_the_skipped_line_names_the_first_file_and_counts_the_others(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    one = {0: "not an image"}
    assert _lines(tmp_path, one, "skipped") == [
        "skipped 1 unusable file(s): train/a/img_000.png (not an image); see data_report.json"
    ]
    two = {0: "not an image", 5: "truncated"}
    assert _lines(tmp_path, two, "skipped") == [
        "skipped 2 unusable file(s): train/a/img_000.png (not an image) and 1 more; see data_report.json"
    ]
    three = {**two, 6: "truncated"}
    assert _lines(tmp_path, three, "skipped") == [
        "skipped 3 unusable file(s): train/a/img_000.png (not an image) and 2 more; see data_report.json"
    ]


def test_non_image_files_are_counted_and_one_is_named(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "val" / "b" / "Thumbs.db").write_bytes(b"\0")
    assert _lines(tmp_path, prefix="ignored") == ["ignored 2 non-image file(s), e.g. train/a/notes.txt"]


def test_the_imbalance_line_names_the_majority_and_minority_class_and_the_ratio(tmp_path):
    """The majority class sorts first by name here, so a line that picked classes by name would be wrong."""
    make_class_folder(tmp_path / "train", {"a": 10, "b": 3})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1}, start=50)
    assert _lines(tmp_path, prefix="class imbalance") == ["class imbalance: a vs b is 3.333:1 in train"]


def test_the_leakage_line_counts_every_excluded_copy(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    make_class_folder(tmp_path / "test", {"a": 2, "b": 2}, start=80)
    shutil.copy(tmp_path / "train" / "a" / "img_000.png", tmp_path / "val" / "a" / "copy.png")
    shutil.copy(tmp_path / "train" / "a" / "img_000.png", tmp_path / "test" / "a" / "copy.png")
    shutil.copy(tmp_path / "train" / "b" / "img_001.png", tmp_path / "test" / "b" / "copy.png")
    assert _lines(tmp_path, prefix="leakage") == [
        "leakage: 3 val/test image(s) are byte-identical to earlier-split images; excluded from evaluation"
    ]


def test_a_test_split_without_a_class_is_named_in_a_warning(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2}, start=50)
    make_class_folder(tmp_path / "test", {"a": 2}, start=80)
    (tmp_path / "test" / "b").mkdir()
    assert _lines(tmp_path, prefix="warning") == [
        "warning: test has no image of 1 class(es) (b): its figures do not measure them (accuracy can look better "
        "than macro F1 says)"
    ]


def test_the_missing_class_warning_names_at_most_five_classes(tmp_path):
    classes = ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]
    make_class_folder(tmp_path / "train", dict.fromkeys(classes, 1))
    make_class_folder(tmp_path / "val", {"c1": 1, "c2": 1}, start=50)  # five classes missing: all named
    assert _lines(tmp_path, prefix="warning: val") == [
        "warning: val has no image of 5 class(es) (c3, c4, c5, c6, c7): its figures do not measure them (accuracy "
        "can look better than macro F1 says)"
    ]
    shutil.rmtree(tmp_path / "val" / "c2")  # six missing: the first five, then an ellipsis
    assert _lines(tmp_path, prefix="warning: val") == [
        "warning: val has no image of 6 class(es) (c2, c3, c4, c5, c6, ...): its figures do not measure them "
        "(accuracy can look better than macro F1 says)"
    ]


def test_identical_images_with_different_labels_are_counted_in_a_warning(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 3, "b": 3})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1}, start=50)
    shutil.copy(tmp_path / "train" / "a" / "img_000.png", tmp_path / "train" / "b" / "same_bytes.png")
    assert _lines(tmp_path, prefix="warning") == ["warning: 1 identical image(s) carry different labels"]


def test_the_counts_line_of_multilabel_data_counts_images_not_labels(tmp_path):
    """An image with two labels is one image: the split sizes are not the sum of the per-class counts."""
    data = make_class_folder(tmp_path / "data", {"red": 3, "blue": 3})
    rows = ["path,label,split"]
    rows += [f"red/img_00{n}.png,red|round,train" for n in range(2)] + ["red/img_002.png,red,val"]
    rows += [f"blue/img_00{n}.png,blue,train" for n in range(2)] + ["blue/img_002.png,blue|round,val"]
    labels = data / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    report = _check(labels).report
    assert report["images"] == {"train": 4, "val": 2}
    assert summary_lines(report) == ["data: 3 classes (blue, red, round); train 4, val 2 images"]


def test_a_class_named_like_the_prefix_keeps_its_name_in_the_usable_line(tmp_path):
    """Only the line's own "data:" prefix turns into "usable:", never a class name that contains it."""
    make_class_folder(tmp_path / "train", {"a": 4, "data:raw": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "data:raw": 2}, start=50)
    announced = found_line(discover(tmp_path))
    lines = summary_lines(_check(tmp_path, {0: "not an image"}).report, announced)
    assert lines[0] == "usable: 2 classes (a, data:raw); train 7, val 4 images"
