"""Finding images, the stable hash split, the pre-split layout, and one-line data errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_class_folder
from tlearn.data.discovery import (
    AUTO_SPLIT,
    assign_split,
    check_split_fractions,
    discover,
    discover_for_evaluation,
    list_image_files,
    path_fraction,
)
from tlearn.errors import DataError


def test_class_folders_are_split_by_path_hash(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 80, "b": 80}, size=16)
    source = discover(data)
    assert source.layout == "class_folders" and source.classes == ["a", "b"]
    assert {image.split for image in source.images} == {"train", "val", "test"}
    for image in source.images:
        assert image.split == assign_split(image.relpath, (0.64, 0.16, 0.2))
    train_share = len(source.in_split("train")) / len(source.images)
    assert 0.55 < train_share < 0.75


@pytest.mark.parametrize("per_class", [20, 200])
def test_every_folder_size_uses_the_same_buckets(tmp_path, per_class):
    data = make_class_folder(tmp_path / "data", {"a": per_class, "b": per_class}, size=16)
    source = discover(data)
    assert all(image.split == assign_split(image.relpath, (0.64, 0.16, 0.20)) for image in source.images)
    assert source.in_split("train") and source.in_split("val") and source.in_split("test")


def test_split_is_stable_when_files_are_added(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 30, "b": 30})
    before = {image.relpath: image.split for image in discover(data).images}
    make_class_folder(data, {"a": 10, "b": 10, "c": 12}, start=100)
    after = {image.relpath: image.split for image in discover(data).images}
    assert len(after) == len(before) + 32
    assert all(after[relpath] == split for relpath, split in before.items())


def test_split_fractions_are_configurable(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 30, "b": 30})
    source = discover(data, split_fractions=(80, 20, 0))
    assert not source.in_split("test") and source.in_split("val")


def test_hidden_and_non_image_files(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 5, "b": 5})
    (data / "a" / ".DS_Store").write_bytes(b"junk")
    (data / "a" / "._img_000.png").write_bytes(b"junk")
    (data / "a" / "notes.txt").write_text("hello")
    (data / ".cache").mkdir()
    (data / "README.md").write_text("top-level file")
    (data / "b" / "nested").mkdir()
    make_class_folder(data / "b" / "nested", {"deep": 2})
    source = discover(data)
    assert source.classes == ["a", "b"]
    assert sorted(source.ignored) == ["README.md", "a/notes.txt"]
    assert sum(1 for image in source.images if image.label == "b") == 7
    assert "b/nested/deep/img_000.png" in {image.relpath for image in source.images}


def test_pre_split_layout(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 6, "b": 6})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2})
    make_class_folder(tmp_path / "test", {"a": 3, "b": 1})
    source = discover(tmp_path)
    assert source.layout == "pre_split"
    assert [len(source.in_split(split)) for split in ("train", "val", "test")] == [12, 4, 4]
    assert source.in_split("val")[0].relpath.startswith("val/")
    evaluation, split = discover_for_evaluation(tmp_path)
    assert split == "test" and len(evaluation.images) == 4


def test_pre_split_without_val_carves_it_from_train(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 30, "b": 30})
    make_class_folder(tmp_path / "test", {"a": 3, "b": 3})
    source = discover(tmp_path)
    assert len(source.in_split("val")) > 0 and all(i.relpath.startswith("train/") for i in source.in_split("val"))
    assert len(source.in_split("test")) == 6


def test_train_and_val_only_evaluates_on_val(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2})
    _, split = discover_for_evaluation(tmp_path)
    assert split == "val"


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "no such folder"),
        ({"a": 3}, "at least two class folders"),
        ({"a": 3, "b": 0}, "class 'b' has no images"),
    ],
)
def test_data_errors(tmp_path, layout, message):
    data = tmp_path / "data"
    if layout:
        make_class_folder(data, layout)
    with pytest.raises(DataError, match=message) as caught:
        discover(data)
    assert "\n" not in str(caught.value)


def test_val_class_unknown_to_train(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 3, "b": 3})
    make_class_folder(tmp_path / "val", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(DataError, match="not present in"):
        discover(tmp_path)


def test_list_image_files(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 2, "b": 2})
    (data / "a" / "notes.txt").write_text("x")
    files = list_image_files([data / "a", data / "b" / "img_000.png"])
    assert [f.name for f in files] == ["img_000.png", "img_001.png", "img_000.png"]
    with pytest.raises(DataError, match="no such file"):
        list_image_files([tmp_path / "nope.jpg"])


@settings(max_examples=40, deadline=None)
@given(
    first=st.integers(min_value=20, max_value=150), sizes=st.lists(st.integers(min_value=1, max_value=120), max_size=4)
)
def test_no_image_ever_changes_split_as_a_folder_grows(tmp_path_factory, first, sizes):
    """A folder grown in any steps, across every size (149 → 150 included): each image keeps its first split."""
    data = tmp_path_factory.mktemp("grow")
    (data / "a").mkdir()
    (data / "b").mkdir()
    seen: dict[str, str] = {}
    total = 0
    for step, size in enumerate([first, *sizes]):
        for index in range(size):  # empty files: discovery decides splits from names alone
            (data / ("a" if index % 2 else "b") / f"img_{step:02d}_{index:04d}.png").write_bytes(b"")
        total += size
        splits = {image.relpath: image.split for image in discover(data).images}
        assert len(splits) == total
        assert all(splits[relpath] == split for relpath, split in seen.items())
        seen = splits


def test_growing_from_149_to_150_and_to_190_images_moves_nothing(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 75, "b": 74})
    before = {image.relpath: image.split for image in discover(data).images}
    for added, extra in ((1, {"b": 1}), (40, {"a": 20, "b": 20})):
        make_class_folder(data, extra, start=1000 + len(before))
        after = {image.relpath: image.split for image in discover(data).images}
        assert len(after) == len(before) + added
        assert [relpath for relpath, split in before.items() if after[relpath] != split] == []
        before = after
    assert {"train", "val", "test"} == set(before.values())


# Promises of issue 23 (each proved against the mutmut mutant that broke it; see benchmarks/results/mutation-notes.md).
# Discovery never opens an image, so these tests use empty files: fast, and the names alone decide everything.


def _touch(root: Path, *relpaths: str) -> Path:
    for relpath in relpaths:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(b"")
    return root


def _splits(source) -> dict[str, str]:
    return {image.relpath: image.split for image in source.images}


def test_the_hash_split_is_pinned_so_every_machine_and_version_splits_a_folder_alike():
    """A run re-made later, elsewhere, must test on the same images: the fraction of a path is fixed for good."""
    pinned = {
        "a/img_000.png": (0.20963891163475928, "train"),
        "b/img_001.png": (0.6743195463874017, "val"),
        "b/5.png": (0.9567654709272937, "test"),
        "caf\udce9.jpg": (0.5954975034897472, "train"),  # not UTF-8 on disk: hashed by its bytes (b"caf\xe9.jpg")
    }
    for relpath, (fraction, split) in pinned.items():
        assert path_fraction(relpath) == pytest.approx(fraction, abs=1e-15)
        assert assign_split(relpath, AUTO_SPLIT) == split
    assert AUTO_SPLIT == (0.64, 0.16, 0.20)


def test_a_file_name_that_is_not_utf8_is_found_and_split_by_its_bytes(tmp_path):
    data = _touch(tmp_path / "data", "a/0.png", "b/0.png")
    odd = os.fsencode(data / "a") + b"/caf\xe9.jpg"
    with open(odd, "wb"):
        pass
    source = discover(data)
    found = {image.relpath: image for image in source.images}
    assert found["a/caf\udce9.jpg"].split == assign_split("a/caf\udce9.jpg", AUTO_SPLIT) == "train"
    assert found["a/caf\udce9.jpg"].path.is_file()


def test_split_fractions_are_shares_of_their_sum_and_bad_ones_are_refused_naming_them(tmp_path):
    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in "ab" for n in range(40)))
    shares = _splits(discover(data, split_fractions=(3, 1, 1)))
    assert shares == _splits(discover(data, split_fractions=(0.6, 0.2, 0.2)))
    assert check_split_fractions((3, 1, 0)) == (0.75, 0.25, 0.0)
    refused = {
        (1, 1): "split fractions must be three non-negative numbers (train, val, test), got (1, 1)",
        (1, -1, 3): "split fractions must be three non-negative numbers (train, val, test), got (1, -1, 3)",
        (0, 0, 0): "split fractions need a positive train and val share, got (0, 0, 0)",
        (0, 1, 1): "split fractions need a positive train and val share, got (0, 1, 1)",
        (1, 0, 1): "split fractions need a positive train and val share, got (1, 0, 1)",
    }
    for fractions, message in refused.items():
        with pytest.raises(DataError) as caught:
            discover(data, split_fractions=fractions)
        assert str(caught.value) == message
    assert check_split_fractions((1, 1, 0)) == (0.5, 0.5, 0.0)  # a test share of zero is allowed


def test_a_data_folder_is_found_from_home_or_a_relative_path_and_recorded_absolute(tmp_path, monkeypatch):
    data = _touch(tmp_path / "data", "a/0.png", "b/0.png")
    (data / "labels.csv").write_text("path,label\na/0.png,a\nb/0.png,b\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "data" / "a")
    for spelled in ("~/data", "..", "~/data/labels.csv", "../labels.csv"):
        source = discover(spelled)
        assert source.root == data.resolve() and source.root.is_absolute()
        assert [image.path.resolve() for image in source.images] == [data / "a/0.png", data / "b/0.png"]
        assert discover_for_evaluation(spelled)[0].root == data.resolve()


def test_a_missing_folder_or_a_plain_file_is_refused_in_one_line_naming_it(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"")
    for call in (discover, discover_for_evaluation):
        with pytest.raises(DataError) as caught:
            call(tmp_path / "nowhere")
        assert str(caught.value) == f"{tmp_path / 'nowhere'}: no such folder"
        with pytest.raises(DataError) as caught:
            call(tmp_path / "photo.jpg")
        expected = "not a folder. Expected a folder of class sub-folders (DATA/<class>/*.jpg)"
        assert str(caught.value) == f"{tmp_path / 'photo.jpg'}: {expected}"


def test_too_few_or_empty_classes_are_refused_naming_the_folder_and_the_fix(tmp_path):
    """The error names the folder that needs fixing (DATA, or DATA/train of a pre-split folder) and what to add."""
    cases = {
        ("a/0.png",): "{root}: need at least two class folders, found only 'a'. Expected {root}/<class>/*.jpg",
        ("notes.txt",): "{root}: need at least two class folders, found none. Expected {root}/<class>/*.jpg",
        ("a/0.png", "b/notes.txt"): "{root}/b: class 'b' has no images (supported: jpg, png, bmp, gif, webp, tif)",
        # b's only image hashes into the test split: the model could never learn b
        ("a/0.png", "a/3.png", "b/5.png"): (
            "{root}/b: class 'b' has 1 image(s) but none landed in the training split; "
            "add images or use pre-split train/val folders"
        ),
        ("train/a/0.png", "val/a/0.png"): (
            "{root}/train: need at least two class folders, found only 'a'. Expected {root}/train/<class>/*.jpg"
        ),
    }
    for number, (files, message) in enumerate(cases.items()):
        root = _touch(tmp_path / f"data{number}", *files)
        with pytest.raises(DataError) as caught:
            discover(root)
        assert str(caught.value) == message.format(root=root)


def test_a_pre_split_folder_keeps_its_own_splits_and_lists_stray_files(tmp_path):
    _touch(tmp_path, "train/a/0.png", "train/a/1.png", "train/b/0.png", "val/a/0.png", "val/b/0.png")
    _touch(tmp_path, "test/a/0.png", "test/b/0.png", "README.md", ".DS_Store", "train/notes.txt", "val/a/x.txt")
    source = discover(tmp_path)
    assert (source.layout, source.classes, source.split_fractions) == ("pre_split", ["a", "b"], None)
    assert _splits(source) == {
        "train/a/0.png": "train",
        "train/a/1.png": "train",
        "train/b/0.png": "train",
        "val/a/0.png": "val",
        "val/b/0.png": "val",
        "test/a/0.png": "test",
        "test/b/0.png": "test",
    }
    assert sorted(source.ignored) == ["README.md", "train/notes.txt", "val/a/x.txt"]


def test_without_a_val_folder_val_is_carved_from_train_in_the_ratio_of_the_fractions(tmp_path):
    _touch(tmp_path, *(f"train/{c}/{n}.png" for c in "ab" for n in range(40)), "test/a/0.png", "test/b/0.png")
    source = discover(tmp_path, split_fractions=(3, 1, 1))
    assert source.split_fractions == (0.6, 0.2, 0.2)
    splits = _splits(source)
    assert [splits["test/a/0.png"], splits["test/b/0.png"]] == ["test", "test"]
    carved = {relpath: split for relpath, split in splits.items() if relpath.startswith("train/")}
    assert carved == {relpath: assign_split(relpath, (0.75, 0.25, 0.0)) for relpath in carved}  # train : val kept
    assert 10 < list(carved.values()).count("val") < 30


def test_a_val_or_test_class_without_training_folder_is_refused_naming_both_folders(tmp_path):
    _touch(tmp_path, "train/a/0.png", "train/b/0.png", "val/a/0.png", "test/a/0.png", "test/d/0.png", "test/c/0.png")
    with pytest.raises(DataError) as caught:
        discover(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'test'}: class folder(s) c, d not present in {tmp_path / 'train'}; "
        "every class needs training images"
    )


def test_evaluating_a_class_folder_uses_every_image_unless_a_hash_split_is_named(tmp_path):
    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in "ab" for n in range(20)), "a/notes.txt")
    for split in (None, "all"):
        whole, chosen = discover_for_evaluation(data, split=split)
        assert (chosen, whole.layout, whole.classes) == ("all", "class_folders", ["a", "b"])
        assert whole.ignored == ["a/notes.txt"]
        assert len(whole.images) == 40 and {image.split for image in whole.images} == {"all"}
        assert whole.root == data and whole.split_fractions is None
    trained = _splits(discover(data))
    for split in ("train", "val", "test"):
        only, chosen = discover_for_evaluation(data, split=split)
        assert chosen == split and only.ignored == ["a/notes.txt"] and only.split_fractions == AUTO_SPLIT
        assert (only.root, only.layout, only.classes) == (data, "class_folders", ["a", "b"])
        assert _splits(only) == {relpath: name for relpath, name in trained.items() if name == split}
    with pytest.raises(DataError) as caught:
        discover_for_evaluation(data, split="holdout")
    assert str(caught.value) == "unknown split 'holdout'; expected one of all, train, val, test"
    empty = _touch(tmp_path / "empty", "a/notes.txt", "b/.hidden.png")
    with pytest.raises(DataError) as caught:
        discover_for_evaluation(empty)
    assert str(caught.value) == f"{empty}: no images found. Expected {empty}/<class>/*.jpg (or train/val/test folders)"


def test_evaluating_a_pre_split_folder_takes_the_split_named_or_all_and_refuses_an_empty_one(tmp_path):
    _touch(tmp_path, "train/a/0.png", "train/b/0.png", "train/b/1.png", "val/a/0.png", "val/b/0.png")
    whole, chosen = discover_for_evaluation(tmp_path, split="all")
    assert chosen == "all" and whole.layout == "pre_split" and len(whole.images) == 5
    assert {image.split for image in whole.images} == {"train", "val"}
    train, chosen = discover_for_evaluation(tmp_path, split="train")
    assert chosen == "train" and sorted(_splits(train)) == ["train/a/0.png", "train/b/0.png", "train/b/1.png"]
    for split in ("test", "holdout"):
        with pytest.raises(DataError) as caught:
            discover_for_evaluation(tmp_path, split=split)
        assert str(caught.value) == f"{tmp_path}: split {split!r} holds no images (present: train, val)"


def test_evaluating_a_pre_split_folder_without_val_carves_val_from_train_as_training_did(tmp_path):
    _touch(tmp_path, *(f"train/{c}/{n}.png" for c in "ab" for n in range(30)), "test/a/0.png", "test/b/0.png")
    tested, chosen = discover_for_evaluation(tmp_path)
    assert chosen == "test" and _splits(tested) == {"test/a/0.png": "test", "test/b/0.png": "test"}
    val, chosen = discover_for_evaluation(tmp_path, split="val")
    trained_val = {relpath: split for relpath, split in _splits(discover(tmp_path)).items() if split == "val"}
    assert chosen == "val" and _splits(val) == trained_val and len(trained_val) > 3


def test_evaluating_a_label_file_takes_its_test_rows_else_val_else_every_row(tmp_path):
    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in "ab" for n in range(20)))
    plain = data / "plain.csv"
    plain.write_text("path,label\n" + "".join(f"{c}/{n}.png,{c}\n" for c in "ab" for n in range(20)))
    whole, chosen = discover_for_evaluation(plain)
    assert chosen == "all" and len(whole.images) == 40 and {image.split for image in whole.images} == {"all"}
    assert (whole.layout, whole.label_file, whole.root, whole.classes) == ("label_file", plain, data, ["a", "b"])
    # A file without splits is evaluated on the hash split named, the same images as the class folders give.
    for split in ("train", "val", "test"):
        only, chosen = discover_for_evaluation(plain, split=split)
        assert chosen == split and _splits(only) == _splits(discover_for_evaluation(data, split=split)[0])
    with pytest.raises(DataError) as caught:
        discover_for_evaluation(plain, split="holdout")
    assert str(caught.value) == "unknown split 'holdout'; expected one of all, train, val, test"
    # Given splits: val when there is no test; rows without a split count as train; a split nobody has is refused.
    with_splits = data / "given.csv"
    with_splits.write_text(
        "path,label,split\na/0.png,a,train\nb/0.png,b,train\na/1.png,a,val\nb/1.png,b,\nc.png,c,val\ngone.png,a,val\n"
    )
    _touch(data, "c.png")
    evaluated, chosen = discover_for_evaluation(with_splits)
    assert chosen == "val" and _splits(evaluated) == {"a/1.png": "val", "c.png": "val"}
    assert (evaluated.root, evaluated.label_file, evaluated.layout) == (data, with_splits, "label_file")
    assert evaluated.ignored == []
    assert evaluated.problems == [f"{with_splits} line 7: gone.png: no such file; row left out"]
    assert evaluated.split_fractions is None
    assert evaluated.classes == ["a", "c"]  # the labels of the images evaluated
    train, _ = discover_for_evaluation(with_splits, split="train")
    assert sorted(_splits(train)) == ["a/0.png", "b/0.png", "b/1.png"]
    with pytest.raises(DataError) as caught:
        discover_for_evaluation(with_splits, split="test")
    assert str(caught.value) == f"{with_splits}: split 'test' holds no images"


def test_a_label_file_that_lists_no_usable_row_is_refused_with_the_first_reason(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ngone.png,a\nlost.png,b\n")
    for call in (discover, discover_for_evaluation):
        with pytest.raises(DataError) as caught:
            call(labels)
        assert str(caught.value) == (
            f"{labels}: no usable rows (2 left out; the first: {labels} line 2: gone.png: no such file; row left out)"
        )
    labels.write_text("path,label\n")
    with pytest.raises(DataError) as caught:
        discover(labels)
    assert str(caught.value) == f"{labels}: no usable rows (0 left out)"


def test_a_label_file_without_val_rows_carves_val_from_its_train_rows_by_the_fractions(tmp_path):
    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in "ab" for n in range(40)))
    labels = data / "labels.csv"
    rows = "".join(f"{c}/{n}.png,{c},{'test' if n < 4 else ''}\n" for c in "ab" for n in range(40))
    labels.write_text("path,label,split\n" + rows)
    source = discover(labels, split_fractions=(2, 1, 1))
    assert source.split_fractions == (0.5, 0.25, 0.25) and source.ignored == [] and source.problems == []
    splits = _splits(source)
    assert all(splits[f"{c}/{n}.png"] == "test" for c in "ab" for n in range(4))
    # Rows without a split take the hash split of the fractions; with no val row at all, train is carved too.
    rest = {relpath: split for relpath, split in splits.items() if int(relpath[2:-4]) >= 4}
    hashed = {relpath: assign_split(relpath, (0.5, 0.25, 0.25)) for relpath in rest}
    assert "val" in hashed.values()  # so nothing was carved: the rows kept their hash split
    assert rest == hashed
    only_train = data / "train.csv"
    only_train.write_text("path,label,split\n" + "".join(f"{c}/{n}.png,{c},train\n" for c in "ab" for n in range(40)))
    carved = _splits(discover(only_train, split_fractions=(2, 1, 1)))
    assert carved == {relpath: assign_split(relpath, (2 / 3, 1 / 3, 0.0)) for relpath in carved}


def test_predicting_a_folder_lists_its_images_at_any_depth_and_named_files_whatever_their_name(tmp_path):
    photos = _touch(tmp_path / "photos", "b.png", "a.JPG", "notes.txt", ".hidden.png", ".cache/c.png")
    _touch(photos, "sub/z.png", "sub/deeper/y.png", "sub/a.webp")
    named = _touch(tmp_path, "named.txt") / "named.txt"
    files = list_image_files([photos, named])
    assert files == [
        photos / "a.JPG",
        photos / "b.png",
        photos / "sub/a.webp",
        photos / "sub/z.png",
        photos / "sub/deeper/y.png",
        named,
    ]
    with pytest.raises(DataError) as caught:
        list_image_files([photos, tmp_path / "nope.jpg"])
    assert str(caught.value) == f"{tmp_path / 'nope.jpg'}: no such file or folder"


def test_predicting_follows_links_out_of_a_named_folder_unless_told_not_to_and_lists_a_file_once(tmp_path):
    photos = _touch(tmp_path / "photos", "a.png")
    _touch(tmp_path / "elsewhere", "e.png")
    os.symlink(tmp_path / "elsewhere", photos / "more")
    os.symlink(photos / "a.png", photos / "again.png")  # the same file under a second name
    assert list_image_files([photos]) == [photos / "a.png", photos / "more/e.png"]
    assert list_image_files([photos], follow_links=False) == [photos / "a.png"]


def _link(target: str | Path, at: Path) -> Path:
    at.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, at)
    return at


def test_links_inside_the_data_folder_are_followed_and_links_out_of_it_noted_unless_followed(tmp_path):
    data = _touch(tmp_path / "data", "a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/deep/s.png", ".store/x.png")
    _touch(tmp_path / "outside", "c/0.png", "c/1.png", "o.png")
    _link("../b/deep", data / "a" / "inside")  # inside DATA: followed, but b/deep/s.png is the real path
    _link("0.png", data / "b" / "alias.png")
    _link("../.store/x.png", data / "a" / "x.png")  # reached only through links: the first one counts
    _link("../.store/x.png", data / "b" / "x.png")
    _link(tmp_path / "outside" / "o.png", data / "b" / "o.png")
    _link(tmp_path / "outside" / "c", data / "c")
    source = discover(data)
    assert source.classes == ["a", "b"]
    kept = ["a/0.png", "a/1.png", "a/x.png", "b/0.png", "b/1.png", "b/deep/s.png"]
    assert sorted(_splits(source)) == kept
    assert sorted(source.ignored) == [
        "a/inside/s.png (the same file as b/deep/s.png; counted once)",
        "b/alias.png (the same file as b/0.png; counted once)",
        "b/o.png (symbolic link leading outside the data folder; not followed: use --follow-links)",
        "b/x.png (the same file as a/x.png; counted once)",
        "c (symbolic link leading outside the data folder; not followed: use --follow-links)",
    ]
    followed = discover(data, follow_links=True)
    assert followed.classes == ["a", "b", "c"]
    assert sorted(_splits(followed)) == sorted([*kept, "b/o.png", "c/0.png", "c/1.png"])
    # Evaluation walks the same way: the outside links are left out and listed in its data report.
    evaluated, _ = discover_for_evaluation(data)
    assert sorted(_splits(evaluated)) == kept and sorted(evaluated.ignored) == sorted(source.ignored)
    assert "b/o.png" in _splits(discover_for_evaluation(data, follow_links=True)[0])


def test_a_pre_split_folder_whose_splits_link_outside_it_is_read_only_with_follow_links(tmp_path):
    data = _touch(tmp_path / "data", "train/a/0.png", "train/b/0.png", "test/a/0.png", "test/b/0.png")
    _touch(tmp_path / "elsewhere", "val/a/0.png", "val/b/0.png", "train/a/0.png", "train/b/0.png")
    _link(tmp_path / "elsewhere" / "val", data / "val")
    source = discover(data)
    assert sorted(_splits(source)) == ["test/a/0.png", "test/b/0.png", "train/a/0.png", "train/b/0.png"]
    assert source.ignored == ["val (symbolic link leading outside the data folder; not followed: use --follow-links)"]
    followed = discover(data, follow_links=True)
    assert {"val/a/0.png": "val", "val/b/0.png": "val"}.items() <= _splits(followed).items()
    linked = tmp_path / "linked"
    _link(tmp_path / "elsewhere" / "train", linked / "train")
    _link(tmp_path / "elsewhere" / "val", linked / "val")
    with pytest.raises(DataError) as caught:
        discover(linked)
    assert str(caught.value) == (
        f"{linked}/train: need at least two class folders, found none (2 symbolic link(s) were not followed; "
        f"see --follow-links). Expected {linked}/train/<class>/*.jpg"
    )
    assert sorted(_splits(discover(linked, follow_links=True))) == [
        "train/a/0.png",
        "train/b/0.png",
        "val/a/0.png",
        "val/b/0.png",
    ]


def test_a_walk_never_goes_round_a_loop_of_links_and_notes_each_link_it_did_not_follow(tmp_path):
    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in "ab" for n in range(3)))
    _link("..", data / "a" / "up")  # DATA itself, from inside
    _link("../..", data / "b" / "deeper" / "loop")
    _link(".", data / "a" / "self")
    _link("self_loop", data / "b" / "self_loop")  # a link to itself
    _link("nowhere.png", data / "b" / "gone.png")  # a broken link with an image's name
    _link("../b", data / "a" / "into_b")  # another class's folder: its images belong to b
    source = discover(data)
    assert source.classes == ["a", "b"]
    assert list(_splits(source)) == [f"{c}/{n}.png" for c in "ab" for n in range(3)]
    assert [image.label for image in source.images] == ["a"] * 3 + ["b"] * 3
    notes = sorted(source.ignored)
    again = "symbolic link to a folder already scanned; not followed again"
    assert notes[:4] == [f"{relpath} ({again})" for relpath in ("a/into_b", "a/self", "a/up", "b/deeper/loop")]
    assert notes[4].startswith("b/gone.png (broken symbolic link: ") and len(notes) == 6
    assert notes[5].startswith("b/self_loop (broken symbolic link: ")
    assert len(list_image_files([data])) == 6


def test_a_linked_class_folder_is_a_class_unless_it_is_another_class_under_a_second_name(tmp_path):
    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in ("b", "d", ".pool") for n in range(3)))
    _link("b", data / "a_again")  # b under a second name: not a class
    _link(".pool", data / "c")  # a folder only reached through a link: a class of its own
    source = discover(data)
    assert source.classes == ["b", "c", "d"]
    assert list(_splits(source)) == [f"{c}/{n}.png" for c in "bcd" for n in range(3)]
    assert [image.label for image in source.images] == [c for c in "bcd" for _ in range(3)]
    assert source.ignored == ["a_again (symbolic link to the class folder b; not a class)"]


def test_a_label_file_row_naming_a_file_outside_its_folder_is_read_only_with_follow_links(tmp_path):
    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in "ab" for n in range(3)))
    outside = _touch(tmp_path / "private", "me.png") / "me.png"
    labels = data / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{c}/{n}.png,{c}\n" for c in "ab" for n in range(3)) + f"{outside},a\n")
    for call in (discover, lambda path, **options: discover_for_evaluation(path, **options)[0]):
        source = call(labels)
        assert len(source.images) == 6 and outside not in [image.path for image in source.images]
        assert len(source.problems) == 1 and source.problems[0].startswith(f"{labels} line 8: {outside}: ")
        assert outside in [image.path for image in call(labels, follow_links=True).images]


def test_a_folder_that_cannot_be_read_is_noted_and_the_rest_is_still_found(tmp_path, monkeypatch):
    """Permissions cannot lock out root (who runs some CI), so the refusal is simulated where discovery lists it."""
    import tlearn.data.discovery as discovery

    data = _touch(tmp_path / "data", *(f"{c}/{n}.png" for c in "ab" for n in range(3)), "a/locked/x.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    source = discover(data)
    assert list(_splits(source)) == [f"{c}/{n}.png" for c in "ab" for n in range(3)]
    assert source.ignored == ["a/locked/ (folder not readable: Permission denied)"]


def test_a_val_folder_linked_from_outside_and_not_followed_leaves_validation_carved_from_train(tmp_path):
    data = tmp_path / "data"
    make_class_folder(data / "train", {"red": 20, "blue": 20})
    make_class_folder(tmp_path / "elsewhere", {"red": 5, "blue": 5})
    os.symlink(tmp_path / "elsewhere", data / "val")
    source = discover(data)  # links are not followed by default
    splits = {image.split for image in source.images}
    assert splits == {"train", "val"} and all(image.relpath.startswith("train/") for image in source.images)
    assert any("val" in note for note in source.ignored)  # the skipped link is still named
    followed = discover(data, follow_links=True)
    assert sum(image.relpath.startswith("val/") for image in followed.images) == 10
