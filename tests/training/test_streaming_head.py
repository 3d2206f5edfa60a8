"""The streamed linear head (more rows than the in-memory solver holds): the optimum scikit-learn finds, for every
likelihood, from float16 rows on disk, and only beyond its row threshold."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.backbones.result_cache import input_digest
from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL, Task
from tlearn.training import head, streaming_head


def _rows(classes: int, n: int = 1500, seed: int = 0, imbalanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes on mixed scales and offsets (a head that must standardise)."""
    fixed = np.random.default_rng(1234)
    centres, scales = fixed.normal(0, 0.8, (classes, 24)), fixed.uniform(0.2, 8, 24)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    if imbalanced:
        y = y[(y != 0) | (rng.random(n) < 0.15)]
    x = (centres[y] + rng.normal(0, 1, (len(y), 24))) * scales + 5
    return x.astype(np.float32), y


def _label_sets(n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    x, y = _rows(3, n)
    targets = np.zeros((len(y), 3), np.float32)
    targets[np.arange(len(y)), y] = 1
    extra = np.random.default_rng(5).random(len(y)) < 0.3
    targets[np.flatnonzero(extra), (y[extra] + 1) % 3] = 1
    return x, targets


def _objective(fitted: head.LinearHead, x: np.ndarray, targets: np.ndarray, c: float, task: Task, balanced: bool):
    """scikit-learn's objective on standardised inputs: C * summed (weighted) loss + 0.5 * |w|^2, where a
    two-class head's w is the difference of its two rows (scikit-learn fits one binary row)."""
    scale = x.std(axis=0)
    coefficients = fitted.weight * scale
    probabilities = np.clip(fitted.probabilities(x), 1e-12, 1 - 1e-12)
    if task is MULTI_LABEL:
        losses = -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities)).sum(axis=1)
    else:
        losses = -np.log(probabilities[np.arange(len(targets)), targets])
        if balanced:
            losses = losses * SINGLE_LABEL.class_weights(targets, fitted.weight.shape[0])[targets]
    if len(coefficients) == 2 and task is SINGLE_LABEL:
        coefficients = coefficients[1] - coefficients[0]
    return c * float(losses.sum()) + 0.5 * float(np.square(coefficients).sum())


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream from 100 rows on, from a 300-row start, in chunks that leave a ragged last one."""
    monkeypatch.setattr(streaming_head, "STREAM_VALUES", 100 * 24)
    monkeypatch.setattr(streaming_head, "START_ROWS", 300)
    monkeypatch.setattr(streaming_head, "CHUNK_ROWS", 700)


CASES = [
    pytest.param(3, SINGLE_LABEL, False, id="three-classes"),
    pytest.param(2, SINGLE_LABEL, False, id="two-classes"),
    pytest.param(4, SINGLE_LABEL, True, id="balanced-imbalanced"),
    pytest.param(3, MULTI_LABEL, False, id="label-sets"),
]


@pytest.mark.parametrize(("classes", "task", "balanced"), CASES)
def test_streamed_head_reaches_scikit_learns_optimum(classes, task, balanced, monkeypatch) -> None:
    x, targets = _label_sets() if task is MULTI_LABEL else _rows(classes, imbalanced=balanced)
    c = 0.02  # strong enough that the penalty's form shows in the optimum
    in_memory = head.fit_head(x, targets, classes, c, task=task, balanced=balanced)
    fits = []
    stream = streaming_head.fit_streaming
    monkeypatch.setattr(streaming_head, "fit_streaming", lambda *args: fits.append(stream(*args)) or fits[-1])
    monkeypatch.setattr(streaming_head, "STREAM_VALUES", 100 * 24)
    monkeypatch.setattr(streaming_head, "START_ROWS", 300)
    monkeypatch.setattr(streaming_head, "CHUNK_ROWS", 700)
    streamed = head.fit_head(x, targets, classes, c, task=task, balanced=balanced)
    assert len(fits) == 1 and fits[0].passes > 1
    reference = _objective(in_memory, x, targets, c, task, balanced)
    assert _objective(streamed, x, targets, c, task, balanced) <= reference * (1 + 1e-4)
    assert np.abs(streamed.probabilities(x) - in_memory.probabilities(x)).max() < 0.01
    assert streamed.task is task


def test_float16_rows_on_disk_are_read_in_place(tmp_path, streamed) -> None:
    x, y = _rows(3, 1000)
    np.save(tmp_path / "rows.npy", x.astype(np.float16))
    on_disk = np.load(tmp_path / "rows.npy", mmap_mode="r")  # read-only, as a shared store is
    from_disk = head.fit_head(on_disk, y, 3, 1.0)
    in_memory = head.fit_head(x.astype(np.float16), y, 3, 1.0)
    np.testing.assert_array_equal(from_disk.weight, in_memory.weight)
    assert (from_disk.logits(x).argmax(1) == y).mean() > 0.8
    assert input_digest("fit", on_disk) == input_digest("fit", np.array(on_disk))


def test_moments_match_numpy(streamed) -> None:
    x, _ = _rows(3, 1500)
    mean, scale = streaming_head.moments(x)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(scale, x.astype(np.float64).std(axis=0), rtol=1e-4)


def test_small_data_never_streams(monkeypatch) -> None:
    x, y = _rows(3, 400)
    monkeypatch.setattr(streaming_head, "fit_streaming", lambda *args: pytest.fail("streamed 400 rows"))
    monkeypatch.setattr(streaming_head, "STREAM_VALUES", 400 * 24)
    head.fit_head(x, y, 3, 1.0)


STREAM_IN_A_FRESH_PROCESS = """
import sys
import numpy as np
from tlearn.training import head, streaming_head
streaming_head.STREAM_VALUES, streaming_head.START_ROWS, streaming_head.CHUNK_ROWS = 100 * 8, 100, 150
x = np.random.default_rng(0).normal(size=(600, 8)).astype(sys.argv[1])
y = (x[:, 0] > 0).astype(int)
fitted = head.fit_head(x, y, 2, 1.0)
print((fitted.logits(x.astype(np.float32)).argmax(1) == y).mean() > 0.9, "torch" in sys.modules)
"""


@pytest.mark.parametrize(("dtype", "imports_torch"), [("float32", False), ("float16", True)])
def test_only_float16_rows_import_torch(dtype, imports_torch) -> None:
    """A run's own float32 matrix streams without torch (its import is ~480 MB of RSS); float16 rows of a store
    are converted by it."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", STREAM_IN_A_FRESH_PROCESS, dtype], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", str(imports_torch)]
