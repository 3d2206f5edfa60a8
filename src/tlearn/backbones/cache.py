"""The on-disk cache: image embeddings, decoding failures and converted backbone weights.

Running a backbone over an image is the expensive step (tens of milliseconds on a CPU). Its result only
depends on the file's bytes, the backbone's weights and the preprocessing, so it is stored under exactly
that key and a second run — or a run on a grown folder — computes only what is new.

Layout under the cache root (`TLEARN_CACHE_DIR`, default the user's cache folder):

    embeddings/<namespace>/<ab>/<sha256 of file>.safetensors   one embedding per image content
    embeddings/<namespace>/namespace.json                      what the namespace is (backbone, preprocessing)
    rejects/<decoder>/<ab>/<sha256 of file>.json               why a file could not be decoded
    backbones/<backbone key>/{weights.safetensors,info.json}   weights in timm's layout, for torch-free reuse

Every entry is written atomically and carries a checksum; an entry that fails to load or to verify is
deleted and recomputed, never trusted and never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_safetensors

from tlearn.util import atomic

CACHE_ENV = "TLEARN_CACHE_DIR"


def cache_root() -> Path:
    """`$TLEARN_CACHE_DIR`, or the platform's user cache folder (e.g. `~/.cache/tlearn`)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path(platformdirs.user_cache_dir("tlearn"))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes: the identity of an image's content, whatever its name."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _sharded(folder: Path, key: str, suffix: str) -> Path:
    return folder / key[:2] / f"{key}{suffix}"


def _checksum(array: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(array).tobytes()):08x}"


class EmbeddingCache:
    """Embeddings of one backbone + preprocessing, keyed by image content hash.

    Example:
        >>> cache = EmbeddingCache(cache_root(), "a1b2c3", {"backbone": "tf_efficientnet_lite0"})  # doctest: +SKIP
        >>> cache.put(sha, embedding); cache.get(sha)  # doctest: +SKIP
    """

    def __init__(self, root: Path, namespace: str, description: Mapping[str, Any]) -> None:
        self.folder = root / "embeddings" / namespace
        self.description = dict(description)
        self.corrupt_entries = 0  # entries found damaged (and recomputed) during this session

    def get(self, content_hash: str) -> np.ndarray | None:
        """The cached embedding, or None when absent or damaged (a damaged entry is deleted)."""
        path = _sharded(self.folder, content_hash, ".safetensors")
        try:
            with safe_open(path, framework="np") as entry:
                stored_checksum = (entry.metadata() or {}).get("crc32")
                embedding = entry.get_tensor("embedding")
        except FileNotFoundError:
            return None
        except (SafetensorError, OSError, ValueError, KeyError):
            return self._discard(path)
        if stored_checksum != _checksum(embedding) or embedding.ndim != 1:
            return self._discard(path)
        return embedding

    def put(self, content_hash: str, embedding: np.ndarray) -> None:
        """Store one embedding (1-D float array) atomically."""
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        if not (self.folder / "namespace.json").exists():
            atomic.write_json(self.folder / "namespace.json", self.description)
        payload = save_safetensors({"embedding": embedding}, metadata={"crc32": _checksum(embedding)})
        atomic.write_bytes(_sharded(self.folder, content_hash, ".safetensors"), payload, durable=False)

    def _discard(self, path: Path) -> None:
        self.corrupt_entries += 1
        path.unlink(missing_ok=True)
        return None


class RejectCache:
    """Why a file content could not be decoded, so later runs report it without decoding it again."""

    def __init__(self, root: Path, decoder_key: str) -> None:
        self.folder = root / "rejects" / decoder_key

    def get(self, content_hash: str) -> str | None:
        """The stored reason, or None (absent or unreadable entries count as absent)."""
        try:
            payload = json.loads(_sharded(self.folder, content_hash, ".json").read_text(encoding="utf-8"))
            return str(payload["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, content_hash: str, reason: str) -> None:
        """Record a decoding failure for this content."""
        payload = json.dumps({"reason": reason}).encode()
        atomic.write_bytes(_sharded(self.folder, content_hash, ".json"), payload, durable=False)


@dataclass(frozen=True)
class CacheSummary:
    """What `tlearn cache info` shows."""

    root: Path
    total_bytes: int
    embeddings: dict[str, dict[str, Any]]  # namespace → {"entries", "bytes", "description"}
    backbones: list[str]
    rejects: int


def summarize(root: Path) -> CacheSummary:
    """Count entries and bytes under the cache root (missing root → empty summary)."""
    embeddings: dict[str, dict[str, Any]] = {}
    for folder in sorted((root / "embeddings").glob("*")) if (root / "embeddings").is_dir() else []:
        files = list(folder.glob("*/*.safetensors"))
        try:
            description = json.loads((folder / "namespace.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            description = {}
        embeddings[folder.name] = {
            "entries": len(files),
            "bytes": sum(path.stat().st_size for path in files),
            "description": description,
        }
    backbones_dir = root / "backbones"
    backbones = sorted(path.name for path in backbones_dir.iterdir()) if backbones_dir.is_dir() else []
    rejects = len(list((root / "rejects").glob("*/*/*.json"))) if (root / "rejects").is_dir() else 0
    total = sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) if root.is_dir() else 0
    return CacheSummary(root, total, embeddings, backbones, rejects)


def clear(root: Path) -> int:
    """Delete everything tlearn cached under `root`; returns the bytes freed."""
    freed = summarize(root).total_bytes
    for name in ("embeddings", "rejects", "backbones"):
        shutil.rmtree(root / name, ignore_errors=True)
    return freed
