"""The linear classifier fitted on cached embeddings (NumPy + scikit-learn; no torch).

Logistic regression on standardised embeddings, full-batch (L-BFGS): multinomial for single-label data, one
binary regression per class for multi-label data (the task's likelihood, `Task.logistic`). Its L2 strength C
is chosen by k-fold cross-validation over every labelled image available (out-of-fold log-loss, which unlike
accuracy still separates candidates on small data), so the choice does not hang on a tiny validation split;
the chosen C is then fitted once on all of them. The out-of-fold probabilities double as an honest estimate of
the head. A multi-label head shares one C across its classes: a rare class has too few positives to choose its
own without overfitting the choice, and on the benchmark mosaics a shared C was within noise of per-class ones.

With fewer images than embedding dimensions (the usual case), the fit runs in the span of the images: the
standardised embeddings are rotated onto their principal axes (an SVD) and the regression is fitted there.
Under an L2 penalty the optimum lies in that span, so the result is the same, several times faster. The
solver's matrices are small, so BLAS runs on one thread: with one thread per core, 45 fits on 300 images
took 0.7 s here against 7 s (the threads only fight each other and whatever else the cores run).

The standardisation is folded into the weights afterwards, so the head is a plain
`logits = embeddings @ weight.T + bias` that drops into the backbone's own classifier layer.

Given a `ResultCache`, a C search or a fit whose inputs (embeddings, targets, settings) and code are unchanged
is read back instead of computed (and scikit-learn is not even imported): a warm run on an unchanged folder
repeats every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlearn.backbones.result_cache import ResultCache, code_digest, input_digest
from tlearn.evaluation.tasks import SINGLE_LABEL, LogisticFit, Task, task_named
from tlearn.training import streaming_head

# Inverse L2 strengths tried (half-decades). Accuracy is flat over most of this range on every suite data set;
# the extremes are there for data sets that need them.
DEFAULT_C_GRID = tuple(float(c) for c in np.round(10 ** np.linspace(-3, 1, 9), 6))
DEFAULT_FOLDS = 5


@dataclass
class LinearHead:
    """logits = embeddings @ weight.T + bias, in the backbone's raw embedding space; the task turns logits into
    probabilities (a softmax, or a sigmoid per class)."""

    weight: np.ndarray  # (num_classes, num_features)
    bias: np.ndarray  # (num_classes,)
    task: Task = SINGLE_LABEL

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, num_features) → (N, num_classes)."""
        return embeddings @ self.weight.T + self.bias

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, num_classes) probabilities of the head's task."""
        return self.task.probabilities(self.logits(embeddings))


@dataclass
class HeadSelection:
    """The C chosen by cross-validation, how every candidate fared, and the chosen C's out-of-fold answers."""

    c: float
    folds: int
    candidates: list[dict[str, float]]  # {"c", "cv_loss", "cv_accuracy"} per C, in grid order
    out_of_fold: np.ndarray = field(repr=False)  # (N, num_classes): each image scored by a head that never saw it

    @property
    def chosen(self) -> dict[str, float]:
        """The chosen candidate's row."""
        return next(row for row in self.candidates if row["c"] == self.c)


def select_c(
    x: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    *,
    task: Task = SINGLE_LABEL,
    balanced: bool = False,
    c_grid: tuple[float, ...] = DEFAULT_C_GRID,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> HeadSelection:
    """Choose C by k-fold cross-validation (lowest out-of-fold log-loss of the task).

    Args:
        x: embeddings (N, D) of every image the choice may use.
        targets: the task's targets of those images (class indices, or label indicators).
        num_classes: number of classes.
        task: single- or multi-label (its likelihood, folds and scores).
        balanced: weight classes inversely to their frequency (single-label data that is imbalanced).
        c_grid: inverse regularisation strengths to try.
        folds: at most this many folds; fewer when the data cannot fill them (see `Task.fold_count`).
        seed: fold assignment and solver.

    Example:
        >>> x, y = np.r_[np.zeros((6, 2)), np.ones((6, 2))], np.r_[np.zeros(6, int), np.ones(6, int)]
        >>> selection = select_c(x, y, 2, folds=3)
        >>> selection.folds, float(selection.chosen["cv_accuracy"])
        (3, 1.0)
    """
    with one_blas_thread():
        assignment = task.folds(targets, folds, seed)
        used = task.fold_count(targets, folds)
        out_of_fold = {c: np.zeros((len(targets), num_classes)) for c in c_grid}
        for fold in range(used):
            held_out = assignment == fold
            solver = _StandardizedLogisticRegression(
                x[~held_out], targets[~held_out], task.logistic(balanced=balanced, seed=seed), task
            )
            for c in sorted(c_grid):  # weakest regularisation last: each fit warm-starts the next
                out_of_fold[c][held_out] = solver.fit(c).probabilities(x[held_out])
    candidates = [
        {
            "c": c,
            "cv_loss": task.loss(out_of_fold[c], targets),
            "cv_accuracy": float(task.right(out_of_fold[c], targets, None).mean()),
        }
        for c in c_grid
    ]
    best = min(candidates, key=lambda row: (row["cv_loss"], -row["cv_accuracy"]))
    return HeadSelection(best["c"], used, candidates, out_of_fold[best["c"]])


def fit_head(
    x: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    c: float,
    *,
    task: Task = SINGLE_LABEL,
    balanced: bool = False,
    seed: int = 0,
) -> LinearHead:
    """Fit the head once with a chosen C (e.g. on every image not held out for testing).

    Beyond `STREAM_VALUES` values (rows x dims; x may be a float16 memmap) the fit is streamed
    (training/streaming_head.py).
    """
    likelihood = task.logistic(balanced=balanced, seed=seed)
    if x.shape[0] * x.shape[1] > streaming_head.STREAM_VALUES:
        return _streamed_head(x, targets, c, likelihood, task, seed)
    with one_blas_thread():
        return _StandardizedLogisticRegression(x, targets, likelihood, task).fit(c)


def _streamed_head(x: Any, targets: np.ndarray, c: float, likelihood: LogisticFit, task: Task, seed: int) -> LinearHead:
    """The head on every row, streamed from an in-memory fit on a stratified sample of them.

    The sample's fit uses C scaled by rows / sample rows: scikit-learn's penalty is fixed while its summed loss
    grows with the rows, so this gives the sample the full data's balance of loss and penalty (a closer start).
    """
    mean, scale = streaming_head.moments(x)
    scale[scale < 1e-6] = 1.0
    sample = task.sample(targets, streaming_head.START_ROWS, seed)
    with one_blas_thread():
        start = _StandardizedLogisticRegression(
            np.asarray(x[sample], dtype=np.float32), targets[sample], likelihood, task
        ).fit(c * len(x) / len(sample))
    standardised_start = (start.weight * scale, start.bias + start.weight @ mean)
    fit = streaming_head.fit_streaming(x, targets, (mean, scale), c, likelihood, standardised_start)
    weight = fit.coefficients / scale
    bias = fit.intercepts - weight @ mean
    return LinearHead(weight=weight.astype(np.float32), bias=bias.astype(np.float32), task=task)


def cached_select_c(
    results: ResultCache | None, x: np.ndarray, targets: np.ndarray, num_classes: int, **options: Any
) -> HeadSelection:
    """`select_c(x, targets, num_classes, **options)`, read back from `results` when an identical search was kept
    there (None: computed)."""
    if results is None:
        return select_c(x, targets, num_classes, **options)
    task = options.get("task", SINGLE_LABEL)
    key = input_digest("select_c", code_digest(), x, targets, num_classes, task.name, _settings(options))
    stored = results.get(key)
    if stored is not None:
        fields = stored.fields
        return HeadSelection(fields["c"], fields["folds"], fields["candidates"], stored.arrays["out_of_fold"])
    selection = select_c(x, targets, num_classes, **options)
    fields = {"c": selection.c, "folds": selection.folds, "candidates": selection.candidates}
    results.put(key, "select_c", fields, {"out_of_fold": selection.out_of_fold})
    return selection


def cached_fit_head(
    results: ResultCache | None, x: np.ndarray, targets: np.ndarray, num_classes: int, c: float, **options: Any
) -> LinearHead:
    """`fit_head(x, targets, num_classes, c, **options)` through `results`, as `cached_select_c`."""
    if results is None:
        return fit_head(x, targets, num_classes, c, **options)
    task = options.get("task", SINGLE_LABEL)
    key = input_digest("fit_head", code_digest(), x, targets, num_classes, c, task.name, _settings(options))
    stored = results.get(key)
    if stored is not None:
        return LinearHead(stored.arrays["weight"], stored.arrays["bias"], task_named(stored.fields["task"]))
    head = fit_head(x, targets, num_classes, c, **options)
    results.put(key, "fit_head", {"task": task.name}, {"weight": head.weight, "bias": head.bias})
    return head


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    """The options of a search or fit as digestible values (the task by name)."""
    return {name: value.name if isinstance(value, Task) else value for name, value in options.items()}


def one_blas_thread():
    """A context in which NumPy's and scikit-learn's BLAS use one thread (imports scikit-learn first, so its
    BLAS is loaded and covered).

    The matrices of head fits and audits are small (a few hundred rows after the SVD), where a multi-threaded
    BLAS spends more time waking and spinning threads than computing: cross-validating the head on signs
    (325 images, 10 classes) took 43 s on the shared 2-core machine with the default threads, 0.9 s with one.
    """
    import sklearn.linear_model  # noqa: F401 - loaded before limiting, so the limit covers its BLAS
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class _StandardizedLogisticRegression:
    """The task's logistic regression on standardised inputs rotated into the images' span, folded back into a
    head on raw embeddings."""

    def __init__(self, x: np.ndarray, targets: np.ndarray, likelihood: LogisticFit, task: Task) -> None:
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0)
        self.scale[self.scale < 1e-6] = 1.0  # constant features: weights stay ~0 under L2, keep them finite
        z = (x - self.mean) / self.scale
        self.basis = None
        if len(z) < z.shape[1]:
            # z = U S Vt: fitting on z V (the coordinates in the images' span) gives the same optimum.
            _, _, vt = np.linalg.svd(z, full_matrices=False)
            self.basis = vt  # (rank, D)
            z = z @ vt.T
        self.z, self.targets, self.likelihood, self.task = z, targets, likelihood, task

    def fit(self, c: float) -> LinearHead:
        coefficients, intercepts = self.likelihood.fit(self.z, self.targets, c)
        if self.basis is not None:
            coefficients = coefficients @ self.basis
        weight = coefficients / self.scale  # (K, D): the standardisation folded into the weights
        bias = intercepts - weight @ self.mean
        return LinearHead(weight=weight.astype(np.float32), bias=bias.astype(np.float32), task=self.task)
