"""review.csv: prefilled sensibly from an audit, applied by path without touching any file, every bad row named."""

from __future__ import annotations

import pytest

from helpers import make_class_folder
from tlearn.audits.review import REVIEW_COLUMNS, apply_review, review_rows, write_review
from tlearn.data.discovery import discover
from tlearn.errors import DataError


def payload(**findings):
    return {
        "settings": {"relabel_confidence": 0.9},
        "label_issues": [],
        "near_duplicates": [],
        "outliers": [],
        **findings,
    }


def issue(path, given, suggested, p_suggested):
    return {"path": path, "given": given, "suggested": suggested, "p_given": 0.02, "p_suggested": p_suggested}


def test_label_errors_are_relabelled_when_the_suggestion_is_confident_else_dropped():
    rows = review_rows(payload(label_issues=[issue("a/1.jpg", "a", "b", 0.97), issue("a/2.jpg", "a", "c", 0.6)]))
    assert [(row["path"], row["suggested"], row["action"]) for row in rows] == [
        ("a/1.jpg", "b", "relabel"),
        ("a/2.jpg", "c", "drop"),
    ]
    assert "likely label error" in rows[0]["reason"]
    # A label set the heads doubt entirely suggests no label at all: dropped, however confident.
    (row,) = review_rows(payload(label_issues=[issue("x.jpg", "a|b", "", 0.99)]))
    assert row["action"] == "drop"


def test_duplicates_relabel_the_odd_one_out_and_drop_copies_that_leak_into_later_splits():
    group = {
        "paths": ["a/1.jpg", "b/1.jpg", "a/2.jpg"],
        "labels": ["a", "b", "a"],
        "splits": ["test", "train", "train"],
        "conflicting_labels": True,
        "cross_split": True,
        "consensus": "a",
    }
    rows = {row["path"]: row for row in review_rows(payload(near_duplicates=[group]))}
    assert rows["b/1.jpg"]["action"] == "relabel" and rows["b/1.jpg"]["suggested"] == "a"
    assert rows["a/1.jpg"]["action"] == "drop" and "leaks into test" in rows["a/1.jpg"]["reason"]
    assert "a/2.jpg" not in rows  # agrees with the group and sits in the earliest split: nothing to do


def test_outliers_are_dropped_only_when_the_heads_disagree_with_their_label():
    outliers = [
        {"path": "a/odd.jpg", "given": "a", "predicted": "b", "nearest_class": "b", "score": 0.8},
        {"path": "a/rare.jpg", "given": "a", "predicted": "a", "nearest_class": "a", "score": 0.7},
    ]
    assert [row["action"] for row in review_rows(payload(outliers=outliers))] == ["drop", "keep"]


def test_an_image_listed_twice_gets_one_row_with_every_reason_and_an_outlier_is_never_relabelled():
    outlier = {"path": "a/1.jpg", "given": "a", "predicted": "b", "nearest_class": "b", "score": 0.8}
    rows = review_rows(payload(label_issues=[issue("a/1.jpg", "a", "b", 0.95)], outliers=[outlier]))
    assert len(rows) == 1 and rows[0]["action"] == "drop" and rows[0]["suggested"] == "b"
    assert "likely label error" in rows[0]["reason"] and "outlier" in rows[0]["reason"]


@pytest.fixture
def data(tmp_path):
    return make_class_folder(tmp_path / "data", {"red": 10, "blue": 10})


def snapshot(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_apply_review_relabels_and_drops_by_path_without_touching_the_images(data, tmp_path):
    before = snapshot(data)
    rows = [
        {"path": "red/img_001.png", "given": "red", "suggested": "blue", "action": "relabel", "reason": "x"},
        {"path": "red/img_002.png", "given": "red", "suggested": "blue", "action": "drop", "reason": "y"},
        {"path": "blue/img_003.png", "given": "blue", "suggested": "red", "action": "keep", "reason": "z"},
    ]
    write_review(tmp_path / "review.csv", rows)
    assert (tmp_path / "review.csv").read_text().splitlines()[0] == ",".join(REVIEW_COLUMNS)
    source = discover(data)
    reviewed, summary = apply_review(source, tmp_path / "review.csv")
    labels = {image.relpath: image.label for image in reviewed.images}
    assert labels["red/img_001.png"] == "blue" and "red/img_002.png" not in labels
    assert labels["blue/img_003.png"] == "blue" and len(labels) == len(source.images) - 1
    splits = {image.relpath: image.split for image in source.images}
    assert all(image.split == splits[image.relpath] for image in reviewed.images)  # nobody changes split
    assert (summary["relabelled"], summary["dropped"], summary["kept"], summary["errors"]) == (1, 1, 1, [])
    assert snapshot(data) == before


def test_each_bad_row_is_skipped_with_its_line_number_and_the_good_rows_still_apply(data, tmp_path):
    review = write(
        tmp_path / "review.csv",
        [
            "path,given,suggested,action",
            "red/img_001.png,red,blue,relabel",  # line 2: fine
            "red/nope.png,red,blue,relabel",  # line 3: no such image
            "red/img_002.png,blue,red,relabel",  # line 4: the label it names is not the image's
            "red/img_003.png,red,green,relabel",  # line 5: no such class
            "red/img_004.png,red,blue,burn",  # line 6: no such action
            "red/img_001.png,red,blue,drop",  # line 7: listed twice
            "",
            "blue/img_000.png,blue,red,DROP",  # line 9: fine (actions in any case)
        ],
    )
    reviewed, summary = apply_review(discover(data), review)
    errors = summary["errors"]
    assert [error.split(":")[0] for error in errors] == [f"{review} line {n}" for n in (3, 4, 5, 6, 7)]
    assert "not an image" in errors[0] and "out of date" in errors[1] and "not a class" in errors[2]
    assert "keep, relabel, drop" in errors[3] and "already reviewed on line 2" in errors[4]
    assert all("\n" not in error for error in errors)
    assert (summary["relabelled"], summary["dropped"]) == (1, 1)
    assert "blue/img_000.png" not in {image.relpath for image in reviewed.images}


def test_a_review_that_empties_a_class_or_is_not_a_review_list_is_refused(data, tmp_path):
    source = discover(data)
    lines = ["path,given,suggested,action"] + [f"{image.relpath},red,red,drop" for image in source.in_split("train")]
    everything_red = write(tmp_path / "drop.csv", [lines[0]] + [line for line in lines[1:] if line.startswith("red/")])
    with pytest.raises(DataError, match="without training images"):
        apply_review(source, everything_red)
    with pytest.raises(DataError, match="missing column"):
        apply_review(source, write(tmp_path / "bad.csv", ["file,label", "red/img_001.png,red"]))
    with pytest.raises(DataError, match="cannot read"):
        apply_review(source, tmp_path / "missing.csv")


def test_a_label_set_review_compares_sets_and_names_each_bad_label(data, tmp_path):
    names = sorted(path.relative_to(data).as_posix() for path in data.rglob("*.png"))
    labels = write(
        tmp_path / "labels.csv",
        ["path,label"] + [f"{data / name},{'red|blue' if i % 2 else 'red'}" for i, name in enumerate(names)],
    )
    source = discover(labels)
    pairs = [image.relpath for image in source.images if len(image.labels) == 2]
    first, second, third = (
        pairs[0],
        pairs[1],
        next(image.relpath for image in source.images if image.labels == ("red",)),
    )
    review = write(
        tmp_path / "review.csv",
        [
            "path,given,suggested,action",
            f"{first},blue|red,red,relabel",  # line 2: the set in another order is the same set
            f"{second},red|blue,red|green,relabel",  # line 3: green is not a class
            f"{third},red|blue,red,relabel",  # line 4: out of date (the image is labelled red alone)
        ],
    )
    reviewed, summary = apply_review(source, review)
    assert [error.split(":")[0] for error in summary["errors"]] == [f"{review} line {n}" for n in (3, 4)]
    assert "'green' is not a class" in summary["errors"][0] and "out of date" in summary["errors"][1]
    assert {image.relpath: image.labels for image in reviewed.images}[first] == ("red",)
    assert {image.relpath: set(image.labels) for image in reviewed.images}[second] == {"red", "blue"}
    assert summary["relabelled"] == 1
