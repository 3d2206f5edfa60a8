"""A resumed fine-tune must find the very images its checkpoints learnt from: the same classes, the same paths
and the same contents (an image edited in place under the same name is other data)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import make_class_folder
from tlearn.data.checks import check_data
from tlearn.data.discovery import discover
from tlearn.errors import RunDirError
from tlearn.runs.layout import RunFolder
from tlearn.training.candidates import guard_resumed_data


def _guard(run: Path, data: Path, hashes: list[str], *, resume: bool) -> None:
    source = discover(data)
    prepared = SimpleNamespace(checked=check_data(source, hashes, {}))
    context = SimpleNamespace(run=RunFolder(run), resume=resume, dist=SimpleNamespace(is_main=True))
    guard_resumed_data(context, prepared)


def test_resuming_on_the_same_images_goes_on(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 6, "blue": 6}, size=16)
    hashes = [f"content-{n}" for n in range(12)]
    _guard(tmp_path / "run", data, hashes, resume=False)  # the first start records what it learns from
    _guard(tmp_path / "run", data, hashes, resume=True)


def test_resuming_on_images_edited_in_place_is_refused(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 6, "blue": 6}, size=16)
    hashes = [f"content-{n}" for n in range(12)]
    _guard(tmp_path / "run", data, hashes, resume=False)
    edited = [*hashes[:-1], "new pixels"]  # same paths, one file's contents changed
    with pytest.raises(RunDirError, match=r"images changed since the checkpoint .*contents differ"):
        _guard(tmp_path / "run", data, edited, resume=True)


def test_resuming_with_other_classes_is_refused(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 6, "blue": 6}, size=16)
    _guard(tmp_path / "run", data, [f"content-{n}" for n in range(12)], resume=False)
    make_class_folder(data, {"green": 6}, size=16)
    with pytest.raises(RunDirError, match="the classes changed"):
        _guard(tmp_path / "run", data, [f"content-{n}" for n in range(18)], resume=True)
