"""The embedding cache: round trip, damaged entries recomputed (never trusted, never fatal), clearing."""

from __future__ import annotations

import numpy as np

from tlearn.backbones.cache import EmbeddingCache, RejectCache, clear, summarize
from tlearn.util.atomic import leftover_temporaries


def _entry(cache: EmbeddingCache, key: str):
    return cache.folder / key[:2] / f"{key}.safetensors"


def test_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {"backbone": {"arch": "x"}})
    vector = np.arange(8, dtype=np.float32)
    assert cache.get("ab" * 32) is None
    cache.put("ab" * 32, vector)
    np.testing.assert_array_equal(cache.get("ab" * 32), vector)
    assert not leftover_temporaries(tmp_path)


def test_truncated_and_bit_flipped_entries_are_discarded(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})
    for key in ("aa" * 32, "bb" * 32):
        cache.put(key, np.ones(16, dtype=np.float32))
    truncated = _entry(cache, "aa" * 32)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    flipped = _entry(cache, "bb" * 32)
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF
    flipped.write_bytes(bytes(data))
    assert cache.get("aa" * 32) is None and cache.get("bb" * 32) is None
    assert cache.corrupt_entries == 2
    assert not truncated.exists() and not flipped.exists()


def test_garbage_entry_is_not_fatal(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns", {})
    path = _entry(cache, "cc" * 32)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 3)
    assert cache.get("cc" * 32) is None


def test_rejects_summary_and_clear(tmp_path):
    rejects = RejectCache(tmp_path, "v1")
    rejects.put("dd" * 32, "truncated or corrupt image")
    assert rejects.get("dd" * 32) == "truncated or corrupt image" and rejects.get("ee" * 32) is None
    EmbeddingCache(tmp_path, "ns", {"backbone": {"arch": "x"}}).put("ff" * 32, np.zeros(4, dtype=np.float32))
    summary = summarize(tmp_path)
    assert summary.embeddings["ns"]["entries"] == 1 and summary.rejects == 1
    assert summary.embeddings["ns"]["description"] == {"backbone": {"arch": "x"}}
    assert clear(tmp_path) > 0
    assert summarize(tmp_path).total_bytes == 0
