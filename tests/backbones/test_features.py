"""Embedding files through the cache: warm runs read nothing, each file is read once, copies are recognised,
bad cache states never stop a run, and running out of memory is never remembered."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import PROJECT, TINY_BACKBONE, colour_image
from tlearn.backbones import cache as cache_module
from tlearn.backbones.cache import EmbeddingCache, RejectCache
from tlearn.backbones.features import FeatureExtractor
from tlearn.data.preprocess import EvalPreprocess
from tlearn.util.progress import Progress


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch):
    """Files written by a test are seconds old; let the index trust them at once."""
    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)


def _folder(root: Path, count: int, *, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(start, start + count):
        path = root / f"img_{n:03d}.png"
        colour_image(((n * 37) % 255, 80, 160), size=40, seed=n).save(path)
        paths.append(path)
    return paths


def _extractor(ref, cache: Path, **options) -> FeatureExtractor:
    return FeatureExtractor(ref, cache, device="cpu", workers=0, engine="torch", batch_size=4, **options)


def _opened_images(monkeypatch, folder: Path) -> list[str]:
    opened: list[str] = []
    real_open = io.open

    def counting_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(folder)):
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr("builtins.open", counting_open)
    return opened


def test_cold_reads_each_file_once_and_warm_reads_none(tiny_ref, tmp_path, monkeypatch):
    paths = _folder(tmp_path / "data", 10)
    shutil.copy(paths[0], tmp_path / "data" / "duplicate.png")
    paths.append(tmp_path / "data" / "duplicate.png")
    opened = _opened_images(monkeypatch, tmp_path / "data")
    cold = _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    assert sorted(opened) == sorted(map(str, paths))  # read once: hashed and decoded from the same bytes
    assert cold.computed == 11 and cold.files_read == 11 and not cold.failures
    np.testing.assert_array_equal(cold.embeddings[10], cold.embeddings[0])
    opened.clear()
    warm = _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    assert opened == [] and warm.files_read == 0 and warm.computed == 0 and warm.cache_hits == 10
    np.testing.assert_array_equal(warm.embeddings, cold.embeddings)
    assert warm.content_hashes == cold.content_hashes


def test_the_hashed_bytes_are_the_decoded_bytes(tiny_ref, tmp_path, monkeypatch):
    """A file replaced right after it is first opened: its embedding is filed under the bytes it was made of."""
    first, second = _folder(tmp_path / "a", 1)[0], _folder(tmp_path / "b", 1, start=7)[0]
    target = tmp_path / "data" / "photo.png"
    target.parent.mkdir()
    shutil.copy(first, target)
    real_open = io.open
    swapped = []

    def open_then_replace(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file) == str(target) and not swapped:
            swapped.append(True)
            shutil.copy(second, tmp_path / "next.png")
            Path(tmp_path / "next.png").replace(target)  # a writer replaces the file; our handle keeps the old one
        return handle

    monkeypatch.setattr(io, "open", open_then_replace)
    monkeypatch.setattr("builtins.open", open_then_replace)
    result = _extractor(tiny_ref, tmp_path / "cache").embed_files([target], progress=Progress(quiet=True))
    monkeypatch.undo()
    assert swapped and result.content_hashes[0] == hashlib.sha256(first.read_bytes()).hexdigest()
    reference = _extractor(tiny_ref, tmp_path / "fresh").embed_files([first], progress=Progress(quiet=True))
    np.testing.assert_allclose(result.embeddings[0], reference.embeddings[0], rtol=1e-5, atol=1e-6)


def test_a_renamed_copy_is_recognised_without_decoding(tiny_ref, tmp_path, monkeypatch):
    paths = _folder(tmp_path / "data", 6)
    _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    copy = shutil.copytree(tmp_path / "data", tmp_path / "copy")
    decoded = []
    real = EvalPreprocess.from_file
    monkeypatch.setattr(EvalPreprocess, "from_file", lambda self, source: decoded.append(1) or real(self, source))
    result = _extractor(tiny_ref, tmp_path / "cache").embed_files(sorted(copy.iterdir()), progress=Progress(quiet=True))
    assert result.files_read == 6 and result.cache_hits == 6 and result.computed == 0 and decoded == []
    assert result.engine == ""  # no backbone was even loaded


def test_memory_errors_are_per_file_and_never_remembered(tiny_ref, tmp_path, monkeypatch):
    paths = _folder(tmp_path / "data", 3)
    real = Image.Image.resize

    def out_of_memory_for_the_second(self, *args, **kwargs):
        out_of_memory_for_the_second.calls = getattr(out_of_memory_for_the_second, "calls", 0) + 1
        if out_of_memory_for_the_second.calls == 2:
            raise MemoryError
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", out_of_memory_for_the_second)
    first = _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    assert list(first.failures) == [1] and "out of memory" in first.failures[1]
    monkeypatch.undo()
    assert RejectCache(tmp_path / "cache", "v2-max89478485").get(first.content_hashes[1]) is None
    second = _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    assert not second.failures and second.computed == 1 and second.cache_hits == 2


def test_lasting_verdicts_are_remembered(tiny_ref, tmp_path):
    paths = _folder(tmp_path / "data", 2)
    (tmp_path / "data" / "web.png").write_text("<html>")
    paths.append(tmp_path / "data" / "web.png")
    _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    again = _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    assert again.failures == {2: "not an image (format not recognised)"} and again.files_read == 0


def test_an_unusable_cache_warns_once_and_the_run_goes_on(tiny_ref, tmp_path):
    paths = _folder(tmp_path / "data", 5)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    stream = io.StringIO()
    extractor = _extractor(tiny_ref, blocker / "cache")
    result = extractor.embed_files(paths, progress=Progress(stream=stream))
    assert not result.failures and result.computed == 5 and np.abs(result.embeddings).sum() > 0
    warnings = [line for line in stream.getvalue().splitlines() if "warning:" in line]
    assert len(warnings) == 2, warnings  # the backbone's weights, and the embedding cache: each said once
    weights = extractor.stored_weights(Progress(quiet=True))
    assert result.info.classifier_keys[0] in weights


def test_a_wrong_length_vector_in_the_cache_is_recomputed(tiny_ref, tmp_path):
    paths = _folder(tmp_path / "data", 3)
    first = _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    namespace = next((tmp_path / "cache" / "embeddings").glob("*.sqlite")).stem
    cache = EmbeddingCache(tmp_path / "cache", namespace, {})
    cache.put(first.content_hashes[2], np.ones(5, dtype=np.float32))  # as a foreign or older writer might
    cache.close()
    again = _extractor(tiny_ref, tmp_path / "cache").embed_files(paths, progress=Progress(quiet=True))
    assert again.corrupt_cache_entries == 1 and again.computed == 1 and again.cache_hits == 2
    np.testing.assert_allclose(again.embeddings, first.embeddings, rtol=1e-5, atol=1e-6)


RANK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tlearn.backbones import cache
    from tlearn.backbones.features import FeatureExtractor
    from tlearn.backbones.registry import resolve_backbone
    from tlearn.util.progress import Progress
    cache.RACY_SECONDS = 0.0  # the test's files are seconds old
    ref = resolve_backbone(sys.argv[1], sys.argv[2])
    paths = sorted(Path(sys.argv[4]).iterdir())[int(sys.argv[5]) :: 2]  # this rank's share, as torchrun shards
    extractor = FeatureExtractor(ref, Path(sys.argv[3]), device="cpu", workers=1, engine="torch", batch_size=4)
    result = extractor.embed_files(paths, progress=Progress(quiet=True))
    assert not result.failures, result.failures
    """
)


def test_two_ranks_fill_one_cache_at_once(tiny_ref, tmp_path):
    data = tmp_path / "data"
    _folder(data, 24)
    (tmp_path / "cache").mkdir()
    _extractor(tiny_ref, tmp_path / "cache").info(
        Progress(quiet=True)
    )  # the backbone stored once, as torchrun's rank 0
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RANK,
                TINY_BACKBONE,
                str(tiny_ref.weights_path),
                str(tmp_path / "cache"),
                data,
                rank,
            ],
            cwd=PROJECT,
        )
        for rank in ("0", "1")
    ]
    assert [rank.wait(timeout=300) for rank in ranks] == [0, 0]
    everything = _extractor(tiny_ref, tmp_path / "cache").embed_files(
        sorted(data.iterdir()), progress=Progress(quiet=True)
    )
    assert everything.cache_hits == 24 and everything.computed == 0 and everything.files_read == 0


def test_engine_setting_auto_defers_to_the_environment(tiny_ref, tmp_path, monkeypatch):
    from tlearn.backbones.features import ENGINE_ENV

    monkeypatch.setenv(ENGINE_ENV, "onnx")
    assert FeatureExtractor(tiny_ref, tmp_path, engine="auto")._engine_choice() == "onnx"
    assert FeatureExtractor(tiny_ref, tmp_path, engine="torch")._engine_choice() == "torch"  # explicit wins
    monkeypatch.delenv(ENGINE_ENV)
    assert FeatureExtractor(tiny_ref, tmp_path, engine="auto")._engine_choice() == "auto"
