"""The linear head on more embeddings than an in-memory solver can hold: chunked L-BFGS in torch.

`fit_head` hands scikit-learn the standardised embeddings, which it copies to float64: a million 1,280-d rows
would be 10 GB, and each of its iterations touches all of them. Beyond `STREAM_VALUES` values the same objective —
the task's likelihood at the chosen C plus 0.5 * |W|^2 on the standardised weights, so the optimum is the one
scikit-learn would find — is minimised here without ever holding more than one chunk as float32:

* the rows may be any array-like of floats indexable by row slices, a float16 `np.memmap` of a cluster's
  embedding store included (a million rows of 1,280 float16 = 2.6 GB, read chunk by chunk);
* the standardisation is folded into the weights of every pass (logits = x @ (W / scale).T + b - ...), so no
  standardised copy is made;
* the start is scikit-learn's fit on a stratified sample (`START_ROWS`), so the full-data L-BFGS (torch's,
  strong Wolfe line search; one pass over the rows per evaluation) only refines: a few dozen passes instead of
  the hundreds a cold start needs.

Why torch rather than SciPy's L-BFGS with NumPy passes: converting float16 chunks to float32 is 4x faster in
torch than in NumPy here (1M x 1,280 rows: 1.9 s against 7.4 s per pass, measured on the 2-core machine), and a
pass is that conversion plus two thin matrix products. Chunks are cache-sized: on 250k rows a pass took 0.26 s
in chunks of 8,192 rows against 0.7 s in chunks of 32,768, whose float32 copy no cache holds. Only data of this
size imports torch here (a head on a few thousand rows never comes here, so warm runs stay torch-free); the
import costs memory (about 480 MB of RSS with a CUDA build of torch, measured here).
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
CHUNK_ROWS = 8_192  # rows converted to float32 at a time (42 MB at 1,280 dims)
MAX_PASSES = 60  # evaluations of the full objective (each one pass over the rows)
GRADIENT_TOLERANCE = 1e-6  # on the objective divided by the rows: converged well below accuracy's resolution


@dataclass
class StreamingFit:
    """A streamed fit's outcome: the coefficients on standardised inputs, and what it took."""

    coefficients: np.ndarray  # (K, D) on standardised embeddings
    intercepts: np.ndarray  # (K,)
    passes: int  # evaluations of the full objective, each a pass over the rows
    seconds: float


def moments(rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation in one pass of float64 sums (population, like `np.std`)."""
    import torch

    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    squares = torch.zeros(rows.shape[1], dtype=torch.float64)
    for chunk in _float32_chunks(torch, rows):
        total += chunk.sum(dim=0, dtype=torch.float64)
        squares += chunk.square().sum(dim=0, dtype=torch.float64)
    mean = total.numpy() / len(rows)
    return mean, np.sqrt(np.maximum(squares.numpy() / len(rows) - mean**2, 0.0))


def _float32_chunks(torch: Any, rows: Any) -> Iterator[Any]:
    """The rows as consecutive float32 tensors of `CHUNK_ROWS`, converted into one reused buffer (a fresh buffer
    per chunk costs page faults; the chunk is only valid until the next one)."""
    buffer = torch.empty((min(CHUNK_ROWS, len(rows)), rows.shape[1]), dtype=torch.float32)
    for begin in range(0, len(rows), CHUNK_ROWS):
        with warnings.catch_warnings():  # a read-only memmap: only ever read, into the buffer
            warnings.simplefilter("ignore", UserWarning)
            stored = torch.from_numpy(np.ascontiguousarray(rows[begin : begin + CHUNK_ROWS]))
        chunk = buffer[: len(stored)]
        chunk.copy_(stored)
        yield chunk


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
    import torch

    started = time.perf_counter()
    num_classes = start[0].shape[0]
    loss_module, penalty_factor = likelihood.summed_loss(torch, targets, num_classes)
    mean = torch.from_numpy(standardisation[0].astype(np.float32))
    scale = torch.from_numpy(standardisation[1].astype(np.float32))
    weight = torch.tensor(start[0], dtype=torch.float32, requires_grad=True)
    bias = torch.tensor(start[1], dtype=torch.float32, requires_grad=True)
    target_tensor = torch.from_numpy(np.ascontiguousarray(targets))
    # The objective divided by C * N keeps its values near 1 whatever the row count (L-BFGS's tolerances are
    # absolute): mean loss + penalty / (C * N).
    norm = 1.0 / len(rows)
    penalty = penalty_factor * 0.5 / (c * len(rows))
    passes = 0

    def objective() -> torch.Tensor:
        nonlocal passes
        passes += 1
        optimizer.zero_grad()
        # The standardisation folded in: z @ W.T + b == x @ (W / scale).T + (b - (W / scale) @ mean). The chunks'
        # gradients gather on the raw weights; one backward step carries them to the standardised ones.
        raw_weight = weight / scale
        raw_bias = bias - raw_weight @ mean
        gathered_weight = raw_weight.detach().requires_grad_()
        gathered_bias = raw_bias.detach().requires_grad_()
        total = 0.0
        for begin, chunk in zip(range(0, len(rows), CHUNK_ROWS), _float32_chunks(torch, rows), strict=True):
            logits = torch.nn.functional.linear(chunk, gathered_weight, gathered_bias)
            loss = loss_module(logits, target_tensor[begin : begin + CHUNK_ROWS]) * norm
            loss.backward()
            total += loss.item()
        torch.autograd.backward([raw_weight, raw_bias], [gathered_weight.grad, gathered_bias.grad])
        regulariser = penalty * weight.square().sum()
        regulariser.backward()
        for parameter in (weight, bias):  # L-BFGS flattens the gradients with `view`
            parameter.grad = parameter.grad.contiguous()
        return torch.tensor(total + regulariser.item())

    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=MAX_PASSES,
        max_eval=MAX_PASSES,
        tolerance_grad=GRADIENT_TOLERANCE,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    optimizer.step(objective)
    return StreamingFit(
        weight.detach().numpy().astype(np.float64),
        bias.detach().numpy().astype(np.float64),
        passes,
        time.perf_counter() - started,
    )
