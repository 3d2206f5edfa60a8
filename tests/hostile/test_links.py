"""Symbolic links in a data folder: walks end, links leading outside DATA are skipped and noted (unless
`follow_links`), and no file is counted twice, whatever path reaches it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_class_folder
from tlearn.data.discovery import discover, discover_for_evaluation, list_image_files
from tlearn.errors import DataError


def link(target: str | Path, at: Path) -> Path:
    at.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, at)
    return at


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """DATA/{a,b}/img_00N.png, 3 images each, and a folder beside DATA with more images."""
    make_class_folder(tmp_path / "outside", {"elsewhere": 2})
    return make_class_folder(tmp_path / "data", {"a": 3, "b": 3})


def relpaths(source) -> list[str]:
    return [image.relpath for image in source.images]


def test_loops_through_links_end_and_each_image_is_found_once(data):
    link("..", data / "a" / "up")  # DATA/a/up -> DATA: the whole data folder again, inside itself
    link("../..", data / "b" / "deeper" / "loop")  # DATA/b/deeper/loop -> DATA
    link(".", data / "a" / "self")  # a folder that contains itself
    link("self_loop", data / "b" / "self_loop")  # a link to itself (ELOOP)
    source = discover(data)
    assert source.classes == ["a", "b"]
    assert relpaths(source) == [f"{c}/img_00{i}.png" for c in "ab" for i in range(3)]
    assert any(note.startswith("a/up (symbolic link to a folder already scanned") for note in source.ignored)
    assert any(note.startswith("b/deeper/loop (symbolic link to a folder already scanned") for note in source.ignored)
    assert any(note.startswith("b/self_loop (broken symbolic link") for note in source.ignored)
    files = list_image_files([data])
    assert len(files) == 6 and len({path.resolve() for path in files}) == 6


def test_links_leading_outside_the_data_folder_are_skipped_with_a_note_unless_followed(data, tmp_path):
    link(tmp_path / "outside" / "elsewhere" / "img_000.png", data / "a" / "stray.png")
    link(tmp_path / "outside" / "elsewhere", data / "c")  # a whole class folder elsewhere
    root_link = link("/", data / "b" / "root")  # the classic accident: a link to the file system's root
    source = discover(data)
    assert source.classes == ["a", "b"] and "a/stray.png" not in relpaths(source)
    notes = [note for note in source.ignored if "outside the data folder" in note]
    assert sorted(note.split(" ")[0] for note in notes) == ["a/stray.png", "b/root", "c"]
    assert len(source.images) == 6
    root_link.unlink()  # followed, it would walk the whole disk
    followed = discover(data, follow_links=True)
    assert followed.classes == ["a", "b", "c"]
    assert {"a/stray.png", "c/img_001.png"} <= set(relpaths(followed))
    # ... without counting the outside image twice: a/stray.png and c/img_000.png are the same file
    assert "c/img_000.png (the same file as a/stray.png; counted once)" in followed.ignored
    assert len({Path(image.path).resolve() for image in followed.images}) == len(followed.images) == 8


def test_a_class_made_only_of_outside_links_says_why_it_is_missing(data, tmp_path):
    for name in ("b",):
        for path in (data / name).iterdir():
            path.unlink()
        (data / name).rmdir()
    link(tmp_path / "outside" / "elsewhere", data / "b")
    with pytest.raises(DataError, match=r"need at least two class folders.*1 symbolic link\(s\) were not followed"):
        discover(data)


def test_a_file_reached_by_several_paths_is_counted_once_at_its_real_path(data):
    link("../a/img_000.png", data / "b" / "0_alias.png")  # sorts before b's own images
    link("../a", data / "b" / "all_of_a")  # a folder link into another class
    link("a", data / "a_again")  # a class folder linked under a second name is not a second class
    os.link(data / "a" / "img_001.png", data / "b" / "hard_link.png")  # a hard link: same file too
    source = discover(data)
    assert source.classes == ["a", "b"]
    assert relpaths(source) == [f"{c}/img_00{i}.png" for c in "ab" for i in range(3)]
    assert "b/0_alias.png (the same file as a/img_000.png; counted once)" in source.ignored
    assert "b/hard_link.png (the same file as a/img_001.png; counted once)" in source.ignored
    assert "a_again (symbolic link to the class folder a; not a class)" in source.ignored


def test_the_real_path_wins_even_when_a_link_to_it_is_walked_first(tmp_path):
    data = make_class_folder(tmp_path / "data", {"a": 1, "b": 2})
    (data / "b" / "sub").mkdir()
    (data / "b" / "img_001.png").rename(data / "b" / "sub" / "img_001.png")
    link("../b/sub", data / "a" / "linked_sub")  # a's walk reaches b/sub first, through a link
    source = discover(data)
    labels = {image.relpath: image.label for image in source.images}
    assert labels == {"a/img_000.png": "a", "b/img_000.png": "b", "b/sub/img_001.png": "b"}


def test_pre_split_links_between_splits_do_not_duplicate_or_leak(tmp_path):
    make_class_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_class_folder(tmp_path / "val", {"a": 2, "b": 2})
    link("../../train/a/img_000.png", tmp_path / "val" / "a" / "copy.png")
    source = discover(tmp_path)
    assert [len(source.in_split(split)) for split in ("train", "val")] == [8, 4]
    assert "val/a/copy.png (the same file as train/a/img_000.png; counted once)" in source.ignored
    evaluation, split = discover_for_evaluation(tmp_path)
    assert split == "val" and len(evaluation.images) == 4


def test_a_label_file_cannot_reach_images_outside_its_folder(data, tmp_path):
    """A label file handed over with a data set names a private photo elsewhere: training and evaluation leave
    that row out, say so in the words of the interface used, and never read it; follow_links reads it."""
    from tlearn.util.wording import cli_spoken

    rows = [f"{name}/img_00{n}.png,{name}" for name in ("a", "b") for n in range(3)]
    labels = data / "labels.csv"
    labels.write_text("path,label\n" + "\n".join([*rows, f"{tmp_path / 'outside' / 'elsewhere' / 'img_000.png'},a"]))
    source = discover(labels)
    assert len(source.images) == 6 and len(source.problems) == 1
    assert "outside" in source.problems[0] and "follow_links=True reads it" in source.problems[0]
    assert len(discover(labels, follow_links=True).images) == 7
    evaluated, _ = discover_for_evaluation(labels)
    assert all("outside" not in str(image.path) for image in evaluated.images)
    with cli_spoken():
        assert "--follow-links reads it" in discover(labels).problems[0]
