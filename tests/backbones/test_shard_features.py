"""Embedding images inside tar shards: the same embeddings as the files they came from, a warm run that opens no
shard, and a rewritten shard whose members are hashed again (only the changed image embedded again)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import colour_image
from tlearn.backbones import cache as cache_module
from tlearn.backbones.features import FeatureExtractor
from tlearn.util.progress import Progress


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch):
    """Files written by a test are seconds old; let the index trust them at once."""
    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    colour_image(((seed * 37) % 255, 80, 160), size=40, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(path: Path, images: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, payload in images.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def _embed(ref, cache: Path, paths: list[Path]):
    extractor = FeatureExtractor(ref, cache, device="cpu", workers=0, engine="torch", batch_size=4)
    return extractor.embed_files(paths, progress=Progress(quiet=True))


def test_shard_members_embed_like_their_files_and_warm_runs_open_no_shard(tiny_ref, tmp_path, monkeypatch):
    folder = tmp_path / "files"
    folder.mkdir()
    images = {f"{n:03d}.png": _png(n) for n in range(6)}
    files = []
    for name, payload in images.items():
        (folder / name).write_bytes(payload)
        files.append(folder / name)
    first = _shard(tmp_path / "shard-0.tar", dict(list(images.items())[:3]))
    second = _shard(tmp_path / "shard-1.tar", dict(list(images.items())[3:]))
    members = [first / name for name in list(images)[:3]] + [second / name for name in list(images)[3:]]

    from_files = _embed(tiny_ref, tmp_path / "files-cache", files)
    cold = _embed(tiny_ref, tmp_path / "shard-cache", members)
    assert cold.computed == 6 and cold.files_read == 6 and not cold.failures
    np.testing.assert_array_equal(cold.embeddings, from_files.embeddings)  # same bytes, same embeddings
    assert cold.content_hashes == from_files.content_hashes

    opened: list[str] = []
    real_open = io.open

    def counting_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".tar"):
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr("builtins.open", counting_open)
    warm = _embed(tiny_ref, tmp_path / "shard-cache", members)
    assert warm.files_read == 0 and warm.computed == 0 and warm.cache_hits == 6
    assert opened == []  # the shards' stat and this process's index of them settle every member
    np.testing.assert_array_equal(warm.embeddings, cold.embeddings)

    # Rewrite the second shard with one image changed: its members are hashed again, one image embedded again.
    _shard(tmp_path / "shard-1.tar", {"003.png": _png(3), "004.png": _png(40), "005.png": _png(5)})
    rewritten = _embed(tiny_ref, tmp_path / "shard-cache", members)
    assert rewritten.files_read == 3 and rewritten.computed == 1 and rewritten.cache_hits == 5
    assert rewritten.content_hashes[4] != cold.content_hashes[4]
    assert rewritten.content_hashes[:4] == cold.content_hashes[:4]
    assert not np.array_equal(rewritten.embeddings[4], cold.embeddings[4])
