"""The frozen backbone on onnxruntime: embeddings on a CPU without importing torch.

On this project's 2-core CPU, onnxruntime runs EfficientNet-Lite0's embedding graph about 3x faster than
PyTorch eager with batch norm folded and channels-last (batch 32: 0.5-0.8 s against 2.7 s; whole embedding stage
of a cold hymenoptera run: 19.0 against 6.2 images/s; machine shared), and importing it takes 0.05 s against
5 s for torch + timm. So frozen-backbone extraction on a CPU runs here; PyTorch stays for GPUs and fine-tuning.
One onnxruntime thread per core the decoding workers leave free: with one worker on two cores, two threads were
30% slower than one (10.7 s against 7.2-8.3 s for 245 images), as they competed with the decoder.

The graph (forward_features + the pre-logits head, batch norm folded) is exported from PyTorch once per
backbone and input size (`tlearn.backbones.onnx_export`, which needs torch), checked against PyTorch on real
images before its first use, and kept in the cache with a record of that check. A graph is used only when its
record says it passed, its bytes still hash to what was recorded, and it was checked with the installed
onnxruntime; anything else means it is exported and checked again the next time torch is loaded anyway.
Embeddings from either engine share the same cache entries (they agree to 1e-4 relative, by that check).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.backbones.registry import BackboneInfo
from tlearn.data.preprocess import normalize
from tlearn.util import atomic

SESSION_ROWS = 4  # images per onnxruntime run (see `run_in_slices`)
ONNX_DIR = "onnx"
INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"
MAX_RELATIVE_DIFFERENCE = 1e-4  # max |Δ| over max |embedding| allowed between onnxruntime and PyTorch


@dataclass(frozen=True)
class GraphFiles:
    """Where the embedding graph of one backbone and input size lives, and the record of its check."""

    model: Path
    record: Path

    @classmethod
    def of(cls, cache_root: Path, backbone_key: str, info: BackboneInfo) -> GraphFiles:
        """The files for a backbone (its cache key) at its input size (the only preprocessing the graph sees)."""
        height, width = info.preprocessing.input_size
        stem = cache_root / ONNX_DIR / f"{backbone_key}-{height}x{width}"
        return cls(stem.with_suffix(".onnx"), stem.with_suffix(".json"))

    def read_record(self) -> dict[str, Any] | None:
        """The stored check record, or None when absent or unreadable."""
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def failure(self) -> str | None:
        """Why the last export with the installed onnxruntime failed its check, if it did (not retried)."""
        record = self.read_record()
        if record is None or record.get("passed") or record.get("onnxruntime") != _onnxruntime_version():
            return None
        return str(record.get("reason", "failed its check"))

    def save(self, payload: bytes, check: dict[str, Any]) -> None:
        """Store a graph that passed its check: the model first, then its record (whose presence means done).

        Raises:
            OSError: the cache cannot be written (the caller keeps the graph in memory for this run).
        """
        atomic.write_bytes(self.model, payload)
        record = {**check, "passed": True, "sha256": hashlib.sha256(payload).hexdigest()}
        atomic.write_json(self.record, record | {"onnxruntime": _onnxruntime_version()})

    def save_failure(self, reason: str, check: dict[str, Any]) -> None:
        """Remember that this export failed its check, so the next runs do not export it again in vain."""
        self.model.unlink(missing_ok=True)
        record = {**check, "passed": False, "reason": reason, "onnxruntime": _onnxruntime_version()}
        atomic.write_json(self.record, record)


class OnnxBackbone:
    """A backbone's embedding graph in an onnxruntime session; the same `embed` as the PyTorch `Backbone`.

    Example:
        >>> onnx = OnnxBackbone.load(GraphFiles.of(cache_root(), ref.key, info), info)  # doctest: +SKIP
        >>> onnx.embed(pixels).shape  # doctest: +SKIP
        (32, 1280)
    """

    engine = "onnx"

    def __init__(self, session: Any, info: BackboneInfo) -> None:
        self.session = session
        self.info = info

    @classmethod
    def load(cls, files: GraphFiles, info: BackboneInfo, *, threads: int | None = None) -> OnnxBackbone | None:
        """The cached graph, if it passed its check with this onnxruntime and is intact; else None."""
        record = files.read_record()
        if record is None or not record.get("passed") or record.get("onnxruntime") != _onnxruntime_version():
            return None
        try:
            payload = files.model.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(payload).hexdigest() != record.get("sha256"):
            return None
        return cls.from_bytes(payload, info, threads=threads)

    @classmethod
    def from_bytes(cls, payload: bytes, info: BackboneInfo, *, threads: int | None = None) -> OnnxBackbone:
        """A session on an ONNX graph held in memory (raises onnxruntime's errors for an invalid graph)."""
        import onnxruntime  # deferred: only the onnx engine needs it

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        return cls(session, info)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_features) float32 embeddings."""
        batch = normalize(pixels, self.info.preprocessing)  # (B, 3, H, W) float32
        return run_in_slices(self.session, [OUTPUT_NAME], INPUT_NAME, batch)[0]


def run_in_slices(session: Any, outputs: list[str], input_name: str, batch: np.ndarray) -> list[np.ndarray]:
    """`session.run` on `SESSION_ROWS` images at a time, the outputs joined.

    onnxruntime keeps the memory its largest run needed (its arena never shrinks) and plans a run's intermediate
    tensors for the whole batch: Lite0 on 32 images at 224 px held 431 MB of RSS after the run against 159 MB on
    4 at a time, and ran at 4.3 ms per image against 3.7-3.8 (the smaller activations stay in the CPU's caches;
    a session loop on the 2-core Xeon, two threads). At 100,000 images that memory was a fifth of a run's
    peak RSS.
    """
    if len(batch) <= SESSION_ROWS:
        return session.run(outputs, {input_name: batch})
    parts = [
        session.run(outputs, {input_name: batch[start : start + SESSION_ROWS]})
        for start in range(0, len(batch), SESSION_ROWS)
    ]
    return [np.concatenate([part[index] for part in parts]) for index in range(len(outputs))]


def default_threads(workers: int = 1) -> int:
    """onnxruntime threads beside `workers` decoding processes: the cores the decoders leave free, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - workers)


def relative_difference(embeddings: np.ndarray, reference: np.ndarray) -> float:
    """max |Δ| / max |reference|: how far one engine's embeddings are from the other's, scale-free."""
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return float(np.abs(embeddings - reference).max()) / max(scale, 1e-12) if reference.size else 0.0


def _onnxruntime_version() -> str:
    from importlib.metadata import version  # the distribution's version, without importing onnxruntime

    return version("onnxruntime")
