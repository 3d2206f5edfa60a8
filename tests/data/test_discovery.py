"""Finding images, the stable hash split, the pre-split layout, and one-line data errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_class_folder
from tlearn.data.discovery import assign_split, discover, discover_for_evaluation, list_image_files
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
