"""The linear classifier fitted on cached embeddings (NumPy + scikit-learn; no torch).

Logistic regression on standardised embeddings, full-batch (L-BFGS). Its L2 strength C is chosen by k-fold
cross-validation over every labelled image available (out-of-fold log-loss, which unlike accuracy still
separates candidates on small data), so the choice does not hang on a tiny validation split; the chosen C is
then fitted once on all of them. The out-of-fold probabilities double as an honest estimate of the head.

With fewer images than embedding dimensions (the usual case), the fit runs in the span of the images: the
standardised embeddings are rotated onto their principal axes (an SVD) and the regression is fitted there.
Under an L2 penalty the optimum lies in that span, so the result is the same, several times faster. The
solver's matrices are small, so BLAS runs on one thread: with one thread per core, 45 fits on 300 images
took 0.7 s here against 7 s (the threads only fight each other and whatever else the cores run).

The standardisation is folded into the weights afterwards, so the head is a plain
`logits = embeddings @ weight.T + bias` that drops into the backbone's own classifier layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from tlearn.util.numeric import cross_entropy, sigmoid, softmax

# Inverse L2 strengths tried (half-decades). Accuracy is flat over most of this range on every suite data set;
# the extremes are there for data sets that need them.
DEFAULT_C_GRID = tuple(float(c) for c in np.round(10 ** np.linspace(-3, 1, 9), 6))
DEFAULT_FOLDS = 5


@dataclass
class LinearHead:
    """logits = embeddings @ weight.T + bias, in the backbone's raw embedding space."""

    weight: np.ndarray  # (num_classes, num_features)
    bias: np.ndarray  # (num_classes,)
    multilabel: bool = False  # one sigmoid per class (tlearn.training.multilabel_head) instead of a softmax

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, num_features) → (N, num_classes)."""
        return embeddings @ self.weight.T + self.bias

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax of the logits, or their sigmoids for a multi-label head, (N, num_classes)."""
        logits = self.logits(embeddings)
        return sigmoid(logits) if self.multilabel else softmax(logits)


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
    y: np.ndarray,
    num_classes: int,
    *,
    balanced: bool = False,
    c_grid: tuple[float, ...] = DEFAULT_C_GRID,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> HeadSelection:
    """Choose C by stratified k-fold cross-validation (lowest out-of-fold log-loss).

    Args:
        x, y: embeddings (N, D) and labels in [0, num_classes) of every image the choice may use.
        num_classes: number of classes.
        balanced: weight classes inversely to their frequency (for imbalanced data).
        c_grid: inverse regularisation strengths to try.
        folds: at most this many folds; fewer when the smallest class has fewer images (at least 2).
        seed: fold assignment and solver.

    Example:
        >>> selection = select_c(embeddings, labels, 2)  # doctest: +SKIP
        >>> head = fit_head(embeddings, labels, 2, selection.c)  # doctest: +SKIP
    """
    with one_blas_thread():
        return _select_c(x, y, num_classes, balanced, c_grid, _fold_count(y, num_classes, folds), seed)


def _select_c(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    balanced: bool,
    c_grid: tuple[float, ...],
    folds: int,
    seed: int,
) -> HeadSelection:
    assignment = _stratified_folds(y, folds, seed)
    out_of_fold = {c: np.zeros((len(y), num_classes)) for c in c_grid}
    for fold in range(folds):
        held_out = assignment == fold
        solver = _StandardizedLogisticRegression(x[~held_out], y[~held_out], num_classes, balanced=balanced, seed=seed)
        for c in sorted(c_grid):  # weakest regularisation last: each fit warm-starts the next
            out_of_fold[c][held_out] = solver.fit(c).probabilities(x[held_out])
    candidates = [
        {
            "c": c,
            "cv_loss": cross_entropy(out_of_fold[c], y),
            "cv_accuracy": float((out_of_fold[c].argmax(1) == y).mean()),
        }
        for c in c_grid
    ]
    best = min(candidates, key=lambda row: (row["cv_loss"], -row["cv_accuracy"]))
    return HeadSelection(best["c"], folds, candidates, out_of_fold[best["c"]])


def fit_head(
    x: np.ndarray, y: np.ndarray, num_classes: int, c: float, *, balanced: bool = False, seed: int = 0
) -> LinearHead:
    """Fit the head once with a chosen C (e.g. on every image not held out for testing)."""
    with one_blas_thread():
        return _StandardizedLogisticRegression(x, y, num_classes, balanced=balanced, seed=seed).fit(c)


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


def _fold_count(y: np.ndarray, num_classes: int, folds: int) -> int:
    smallest = int(np.bincount(y, minlength=num_classes)[np.bincount(y, minlength=num_classes) > 0].min())
    return max(2, min(folds, smallest))


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per image: each class spread evenly over the folds, in a seeded random order."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(y), dtype=np.int64)
    offset = 0
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # classes start on different folds, so small classes do not pile up in fold 0
    return assignment


class _StandardizedLogisticRegression:
    """sklearn's L-BFGS logistic regression on standardised inputs, warm-started from one C to the next."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int, *, balanced: bool, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression  # deferred: ~1.5 s to import

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
        self.z, self.y, self.num_classes = z, y, num_classes
        self.model = LogisticRegression(
            max_iter=2000, class_weight="balanced" if balanced else None, warm_start=True, random_state=seed
        )

    def fit(self, c: float) -> LinearHead:
        from sklearn.exceptions import ConvergenceWarning

        self.model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(self.z, self.y)
        coefficients = self.model.coef_ if self.basis is None else self.model.coef_ @ self.basis
        return _fold_standardization(coefficients, self.model.intercept_, self.mean, self.scale, self.num_classes)


def _fold_standardization(
    coefficients: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray, num_classes: int
) -> LinearHead:
    """Turn coefficients on standardised inputs into a softmax head on raw embeddings."""
    weight = coefficients / scale  # (K, D); K == 1 for two classes
    bias = intercept - weight @ mean
    if num_classes == 2 and weight.shape[0] == 1:
        # sigmoid(z) == softmax([-z/2, z/2])[1]: a symmetric two-row head gives identical probabilities.
        weight = np.vstack([-weight[0] / 2, weight[0] / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    return LinearHead(weight=weight.astype(np.float32), bias=bias.astype(np.float32))
