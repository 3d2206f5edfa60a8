"""How fast a model answers on this machine: images per second in batches, and one picture's latency.

Every model is timed on onnxruntime, what `tlearn serve` and `predict` run an exported model on, so a teacher,
its student and their INT8 exports are timed alike: an `.onnx` file as it is, a run or model directory exported
to a temporary ONNX file first (with the checks of `tlearn export`). The pictures are random pixels at the
model's input size: the time of the network, not of decoding files (which `benchmarks/bench_inference.py`
measures).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlearn.deploy.export import export_model
from tlearn.engines.base import InferenceEngine
from tlearn.engines.loading import ONNX_SUFFIX, load_engine

BATCH_SIZE = 32  # pictures per call when measuring throughput (the service's default batch)
MIN_SECONDS = 2.0  # throughput is measured over at least this long (and at least MIN_BATCHES calls)
MIN_BATCHES = 3
LATENCY_CALLS = 20  # single-picture calls whose median is the latency


@dataclass(frozen=True)
class ModelSpeed:
    """A model's speed on this machine.

    Attributes:
        images_per_second: pictures answered per second in batches of `batch_size`.
        latency_ms: the median time to answer one picture alone.
        batch_size: the batch the throughput was measured with.
    """

    images_per_second: float
    latency_ms: float
    batch_size: int


def measure_speed(model: str | Path, *, seconds: float = MIN_SECONDS) -> ModelSpeed:
    """Time a model (an `.onnx` file, or a run or model directory, exported first) on onnxruntime.

    Raises:
        ModelFileError: the file is not a tlearn model.
        ExportError: a directory's model could not be exported (its check failed).

    Example:
        >>> measure_speed("runs/ants").images_per_second  # doctest: +SKIP
        231.4
    """
    path = Path(model)
    if path.suffix.lower() == ONNX_SUFFIX:
        return time_engine(load_engine(path), seconds=seconds)
    with tempfile.TemporaryDirectory(prefix="tlearn-speed-") as temp:
        exported = export_model(path, Path(temp) / f"model{ONNX_SUFFIX}").path
        return time_engine(load_engine(exported), seconds=seconds)


def time_engine(engine: InferenceEngine, *, batch_size: int = BATCH_SIZE, seconds: float = MIN_SECONDS) -> ModelSpeed:
    """Throughput over batches of `batch_size` random pictures for at least `seconds`, then the median latency
    of single pictures; one warm-up call of each size first (sessions allocate on their first run)."""
    height, width = engine.preprocessing.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8)
    engine.probabilities(pixels)
    engine.probabilities(pixels[:1])
    calls, started = 0, time.perf_counter()
    while calls < MIN_BATCHES or time.perf_counter() - started < seconds:
        engine.probabilities(pixels)
        calls += 1
    rate = calls * batch_size / (time.perf_counter() - started)
    latencies = []
    for _ in range(LATENCY_CALLS):
        call = time.perf_counter()
        engine.probabilities(pixels[:1])
        latencies.append(time.perf_counter() - call)
    return ModelSpeed(images_per_second=rate, latency_ms=1000 * float(np.median(latencies)), batch_size=batch_size)
