"""The multi-label linear head: one logistic regression per class on cached embeddings (NumPy + scikit-learn).

Each class is a yes/no question asked of every image (one-vs-rest), so an image may get any number of labels.
As for the single-label head (`tlearn.training.head`), the embeddings are standardised and, with fewer images
than dimensions, rotated into the images' span before fitting; one L2 strength C is shared by every class and
chosen by k-fold cross-validation on the mean out-of-fold binary log-loss. One C for all classes rather than
one per class: a rare class has too few positives to choose its own without overfitting the choice, and on
the benchmark mosaics a shared C was within noise of per-class choices.

Decision thresholds are chosen per class on the out-of-fold probabilities (each image scored by a head that
never saw it): the one with the highest F1, which on rare classes sits well below 0.5.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from tlearn.evaluation.multilabel import binary_log_loss
from tlearn.training.head import DEFAULT_C_GRID, DEFAULT_FOLDS, LinearHead, one_blas_thread

MIN_POSITIVE_RATE = 1e-4  # probability floor/ceiling of a class with no positive (or no negative) to learn from


@dataclass
class MultilabelSelection:
    """The shared C chosen by cross-validation, every candidate's score, and the chosen C's out-of-fold answers."""

    c: float
    folds: int
    candidates: list[dict[str, float]]  # {"c", "cv_loss", "cv_subset_accuracy"} per C, in grid order
    out_of_fold: np.ndarray = field(repr=False)  # (N, K) sigmoid probabilities from heads that never saw the image


def select_c_multilabel(
    x: np.ndarray,
    targets: np.ndarray,
    *,
    c_grid: tuple[float, ...] = DEFAULT_C_GRID,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> MultilabelSelection:
    """Choose the shared C by k-fold cross-validation (lowest mean out-of-fold binary log-loss).

    Args:
        x: embeddings (N, D).
        targets: (N, K) 0/1 indicators, one column per class.
        c_grid: inverse regularisation strengths to try.
        folds: at most this many folds (fewer when there are fewer images per fold than 2).
        seed: fold assignment and solver.

    Example:
        >>> selection = select_c_multilabel(embeddings, targets)  # doctest: +SKIP
        >>> head = fit_multilabel_head(embeddings, targets, selection.c)  # doctest: +SKIP
    """
    folds = max(2, min(folds, len(x) // 2))
    assignment = _label_set_folds(targets, folds, seed)
    out_of_fold = {c: np.zeros(targets.shape, dtype=np.float64) for c in c_grid}
    with one_blas_thread():
        for fold in range(folds):
            held_out = assignment == fold
            solver = _OneVsRest(x[~held_out], targets[~held_out], seed=seed)
            for c in sorted(c_grid):  # weakest regularisation last: each fit warm-starts the next
                out_of_fold[c][held_out] = solver.fit(c).probabilities(x[held_out])
    candidates = [
        {
            "c": c,
            "cv_loss": binary_log_loss(out_of_fold[c], targets),
            "cv_subset_accuracy": float(((out_of_fold[c] >= 0.5) == (targets > 0)).all(axis=1).mean()),
        }
        for c in c_grid
    ]
    best = min(candidates, key=lambda row: (row["cv_loss"], -row["cv_subset_accuracy"]))
    return MultilabelSelection(best["c"], folds, candidates, out_of_fold[best["c"]])


def fit_multilabel_head(x: np.ndarray, targets: np.ndarray, c: float, *, seed: int = 0) -> LinearHead:
    """One logistic regression per class with the chosen C; logits = embeddings @ weight.T + bias, (N, K)."""
    with one_blas_thread():
        return _OneVsRest(x, targets, seed=seed).fit(c)


def choose_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the decision threshold with the highest F1 on these (out-of-fold) probabilities.

    The threshold sits halfway between the best-F1 probability and the next lower one, so a new image scored
    a little below a validation positive still gets the label; 0.5 for a class without positives.
    """
    thresholds = []
    for column in range(targets.shape[1]):
        scores, truth = probabilities[:, column], targets[:, column] > 0
        if not truth.any():
            thresholds.append(0.5)
            continue
        order = np.argsort(-scores, kind="stable")
        ranked, hits = scores[order], truth[order]
        true_positives = np.cumsum(hits)
        f1 = 2 * true_positives / (np.arange(1, len(ranked) + 1) + truth.sum())
        best = int(np.argmax(f1))
        below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
        thresholds.append(float(np.clip((ranked[best] + below) / 2, 1e-6, 1.0)))
    return thresholds


def _label_set_folds(targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per image, spreading each class's images over the folds (rarest class placed first)."""
    rng = np.random.default_rng(seed)
    assignment = np.full(len(targets), -1, dtype=np.int64)
    next_fold = 0
    for column in np.argsort(targets.sum(axis=0), kind="stable"):  # rarest first: its few images spread out
        members = np.flatnonzero((targets[:, column] > 0) & (assignment < 0))
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + next_fold) % folds
        next_fold = (next_fold + len(members)) % folds
    rest = np.flatnonzero(assignment < 0)
    assignment[rest] = (np.arange(len(rest)) + next_fold) % folds
    return assignment


class _OneVsRest:
    """Standardised (and span-rotated) embeddings, one warm-started binary L-BFGS fit per class."""

    def __init__(self, x: np.ndarray, targets: np.ndarray, *, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression  # deferred: ~1.5 s to import

        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0)
        self.scale[self.scale < 1e-6] = 1.0
        z = (x - self.mean) / self.scale
        self.basis = None
        if len(z) < z.shape[1]:
            _, _, vt = np.linalg.svd(z, full_matrices=False)
            self.basis = vt  # (rank, D): the optimum under an L2 penalty lies in the images' span
            z = z @ vt.T
        self.z, self.targets = z, targets > 0
        self.models = [
            LogisticRegression(max_iter=2000, warm_start=True, random_state=seed) for _ in range(targets.shape[1])
        ]

    def fit(self, c: float) -> LinearHead:
        from sklearn.exceptions import ConvergenceWarning

        dim = self.z.shape[1]
        coefficients, intercepts = np.zeros((len(self.models), dim)), np.zeros(len(self.models))
        for column, model in enumerate(self.models):
            truth = self.targets[:, column]
            if truth.all() or not truth.any():  # nothing to separate: a constant, nearly certain answer
                rate = float(np.clip(truth.mean(), MIN_POSITIVE_RATE, 1 - MIN_POSITIVE_RATE))
                intercepts[column] = np.log(rate / (1 - rate))
                continue
            model.set_params(C=c)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(self.z, truth)
            coefficients[column], intercepts[column] = model.coef_[0], model.intercept_[0]
        if self.basis is not None:
            coefficients = coefficients @ self.basis
        weight = coefficients / self.scale  # (K, D) on raw embeddings
        bias = intercepts - weight @ self.mean
        return LinearHead(weight=weight.astype(np.float32), bias=bias.astype(np.float32), multilabel=True)
