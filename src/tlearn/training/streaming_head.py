"""The linear head on more embeddings than an in-memory solver can hold: chunked L-BFGS (SciPy's) over NumPy passes.

`fit_head` hands scikit-learn the standardised embeddings, which it copies to float64: a million 1,280-d rows
would be 10 GB, and each of its iterations touches all of them. Beyond `STREAM_VALUES` values the same objective —
the task's likelihood at the chosen C plus 0.5 * |W|^2 on the standardised weights, so the optimum is the one
scikit-learn would find — is minimised here without ever holding more than one chunk as float32:

* the rows may be any array-like of floats indexable by row slices, a float16 `np.memmap` of a cluster's
  embedding store included (a million rows of 1,280 float16 = 2.6 GB, read chunk by chunk); float32 rows (a
  run's own matrix) are read in place, chunk by chunk, with no copy;
* the standardisation is folded into the weights of every pass (logits = x @ (W / scale).T + b - ...), so no
  standardised copy is made;
* the start is scikit-learn's fit on a stratified sample (`START_ROWS`), so the full-data L-BFGS (one pass over
  the rows per evaluation of the objective and its gradient) only refines: a few dozen passes instead of the
  hundreds a cold start needs.

Float16 rows are converted to float32 chunks by torch, imported only for them: the conversion is 4x faster in
torch than in NumPy here (1M x 1,280 rows: 1.9 s against 7.4 s per pass, 2-core machine), and a pass is that
conversion plus two thin matrix products. Float32 rows never import torch: the import costs about 480 MB of RSS
with a CUDA build of torch (measured here), a third of a 100,000-image run's memory. Chunks are cache-sized: on
250k rows a pass took 0.26 s in chunks of 8,192 rows against 0.7 s in chunks of 32,768.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlearn.evaluation.tasks import LogisticFit

# `fit_head` streams beyond this many values (rows x dims): the in-memory solver's float64 copy would pass 256 MB
# (25,000 rows of 1,280 dims; 20,000 images leave 16,000 train + val rows in memory).
STREAM_VALUES = 32_000_000
START_ROWS = 10_000  # rows of the in-memory fit the streaming solver starts from
CHUNK_ROWS = 8_192  # rows per chunk (a float32 copy of float16 rows: 42 MB at 1,280 dims)
MAX_PASSES = 60  # evaluations of the full objective (each one pass over the rows)
GRADIENT_TOLERANCE = 1e-6  # on the objective divided by the rows: converged well below accuracy's resolution
# Relative change of the objective at which L-BFGS stops: about what its float32 chunk sums resolve (1e-12 took
# 63 passes on 1M rows where 1e-8 took 30, to the same test accuracy).
OBJECTIVE_TOLERANCE = 1e-8


@dataclass
class StreamingFit:
    """A streamed fit's outcome: the coefficients on standardised inputs, and what it took."""

    coefficients: np.ndarray  # (K, D) on standardised embeddings
    intercepts: np.ndarray  # (K,)
    passes: int  # evaluations of the full objective, each a pass over the rows
    seconds: float


def moments(rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation in one pass of float64 sums (population, like `np.std`)."""
    total = np.zeros(rows.shape[1])
    squares = np.zeros(rows.shape[1])
    for _, chunk in _float32_chunks(rows):
        total += chunk.sum(axis=0, dtype=np.float64)
        squares += np.einsum("ij,ij->j", chunk, chunk, dtype=np.float64)
    mean = total / len(rows)
    return mean, np.sqrt(np.maximum(squares / len(rows) - mean**2, 0.0))


def _float32_chunks(rows: Any) -> Iterator[tuple[slice, np.ndarray]]:
    """The rows as consecutive float32 chunks of `CHUNK_ROWS` with their slices: float32 rows as they are, other
    types converted into one reused buffer (a fresh buffer per chunk costs page faults; such a chunk is only
    valid until the next one)."""
    if rows.dtype == np.float32:
        for begin in range(0, len(rows), CHUNK_ROWS):
            yield slice(begin, begin + CHUNK_ROWS), np.asarray(rows[begin : begin + CHUNK_ROWS])
        return
    import torch  # the fast float16 → float32 conversion (see the module docstring)

    buffer = np.empty((min(CHUNK_ROWS, len(rows)), rows.shape[1]), dtype=np.float32)
    for begin in range(0, len(rows), CHUNK_ROWS):
        with warnings.catch_warnings():  # a read-only memmap: only ever read, into the buffer
            warnings.simplefilter("ignore", UserWarning)
            stored = torch.from_numpy(np.ascontiguousarray(rows[begin : begin + CHUNK_ROWS]))
        chunk = buffer[: len(stored)]
        torch.from_numpy(chunk).copy_(stored)
        yield slice(begin, begin + len(stored)), chunk


def fit_streaming(
    rows: Any,
    targets: np.ndarray,
    standardisation: tuple[np.ndarray, np.ndarray],
    c: float,
    likelihood: LogisticFit,
    start: tuple[np.ndarray, np.ndarray],
) -> StreamingFit:
    """Minimise the task's summed loss at inverse L2 strength `c` over every row, from `start`.

    Args:
        rows: (N, D) embeddings, any float dtype, indexable by row slices (an array or memmap).
        targets: the task's targets of the rows.
        standardisation: (mean, scale) per feature; the weights are those on (rows - mean) / scale.
        c: inverse L2 strength, as scikit-learn's C (the summed loss weighs C times the penalty).
        likelihood: the task's in-memory likelihood (`Task.logistic`), whose objective this reproduces.
        start: (K, D) coefficients and (K,) intercepts on standardised inputs to start from.
    """
    from scipy.optimize import minimize

    started = time.perf_counter()
    shape = start[0].shape
    loss, penalty_factor = likelihood.summed_loss(targets, shape[0])
    mean, scale = standardisation
    # The objective divided by C * N keeps its values near 1 whatever the row count (L-BFGS's tolerances are
    # absolute): mean loss + penalty / (C * N).
    norm = 1.0 / len(rows)
    penalty = penalty_factor * 0.5 / (c * len(rows))
    passes = 0

    def objective(parameters: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal passes
        passes += 1
        weight, bias = parameters[: shape[0] * shape[1]].reshape(shape), parameters[shape[0] * shape[1] :]
        # The standardisation folded in: z @ W.T + b == x @ (W / scale).T + (b - (W / scale) @ mean). The chunks'
        # gradients gather on the raw weights, then carry over to the standardised ones.
        raw_weight = weight / scale
        raw_bias = bias - raw_weight @ mean
        raw_weight32, raw_bias32 = raw_weight.astype(np.float32), raw_bias.astype(np.float32)
        total, weight_gradient, bias_gradient = 0.0, np.zeros(shape), np.zeros(shape[0])
        for where, chunk in _float32_chunks(rows):
            summed, logit_gradient = loss(chunk @ raw_weight32.T + raw_bias32, where)
            total += summed
            weight_gradient += logit_gradient.T @ chunk
            bias_gradient += logit_gradient.sum(axis=0, dtype=np.float64)
        # d raw_weight / d weight = 1 / scale; d raw_bias / d weight = -mean / scale; d raw_bias / d bias = 1.
        weight_gradient = (weight_gradient - np.outer(bias_gradient, mean)) / scale * norm + 2 * penalty * weight
        value = total * norm + penalty * float(np.square(weight).sum())
        return value, np.concatenate([weight_gradient.ravel(), bias_gradient * norm])

    result = minimize(
        objective,
        np.concatenate([np.ravel(start[0]), np.ravel(start[1])]).astype(np.float64),
        jac=True,
        method="L-BFGS-B",
        options={
            "maxiter": MAX_PASSES,
            "maxfun": MAX_PASSES,
            "gtol": GRADIENT_TOLERANCE,
            "ftol": OBJECTIVE_TOLERANCE,
            "maxcor": 20,
        },
    )
    size = shape[0] * shape[1]
    return StreamingFit(result.x[:size].reshape(shape), result.x[size:], passes, time.perf_counter() - started)
