"""The linear classifier fitted on cached embeddings (NumPy + scikit-learn; no torch).

Logistic regression on standardised embeddings, full-batch (L-BFGS), with the L2 strength chosen on the
validation split. The standardisation is folded into the weights afterwards, so the head is a plain
`logits = embeddings @ weight.T + bias` that drops into the backbone's own classifier layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from tlearn.util.numeric import cross_entropy, softmax

# scikit-learn takes ~1.5 s to import; it is imported when first used (and `train` pre-imports it in the
# background while the backbone runs), so `import tlearn` and the CLI start fast.
SKLEARN_MODULES = ("sklearn.linear_model", "sklearn.metrics")

# Inverse L2 strengths tried, weakest regularisation last; one decade apart is as fine as small
# validation sets can tell apart.
DEFAULT_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class LinearHead:
    """logits = embeddings @ weight.T + bias, in the backbone's raw embedding space."""

    weight: np.ndarray  # (num_classes, num_features)
    bias: np.ndarray  # (num_classes,)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, num_features) → (N, num_classes)."""
        return embeddings @ self.weight.T + self.bias

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax of the logits, (N, num_classes)."""
        return softmax(self.logits(embeddings))


@dataclass
class HeadFit:
    """The fitted head, the chosen C and the validation figures of every candidate."""

    head: LinearHead
    c: float
    candidates: list[dict[str, float]]  # {"c", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}


def fit_linear_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    *,
    balanced: bool = False,
    c_grid: tuple[float, ...] = DEFAULT_C_GRID,
    seed: int = 0,
) -> HeadFit:
    """Fit logistic regression for each C, keep the best on validation (accuracy, then loss).

    Args:
        train_x, train_y: training embeddings (N, D) and labels in [0, num_classes).
        val_x, val_y: validation embeddings and labels used to choose C.
        num_classes: number of classes (every one must occur in train_y).
        balanced: weight classes inversely to their frequency (for imbalanced data).
        c_grid: inverse regularisation strengths to try.
        seed: for the solver's reproducibility.

    Example:
        >>> fit = fit_linear_head(train_x, train_y, val_x, val_y, 2)  # doctest: +SKIP
        >>> fit.head.probabilities(test_x)  # doctest: +SKIP
    """
    solver = _StandardizedLogisticRegression(train_x, train_y, num_classes, balanced=balanced, seed=seed)
    best: tuple[tuple[float, float], float, LinearHead] | None = None
    candidates: list[dict[str, float]] = []
    for c in sorted(c_grid):
        head = solver.fit(c)
        train_probabilities = head.probabilities(train_x)
        val_probabilities = head.probabilities(val_x)
        row = {
            "c": c,
            "train_loss": cross_entropy(train_probabilities, train_y),
            "train_accuracy": float((train_probabilities.argmax(1) == train_y).mean()),
            "val_loss": cross_entropy(val_probabilities, val_y),
            "val_accuracy": float((val_probabilities.argmax(1) == val_y).mean()),
        }
        candidates.append(row)
        score = (row["val_accuracy"], -row["val_loss"])
        if best is None or score > best[0]:
            best = (score, c, head)
    assert best is not None
    return HeadFit(head=best[2], c=best[1], candidates=candidates)


def refit_linear_head(
    x: np.ndarray, y: np.ndarray, num_classes: int, c: float, *, balanced: bool = False, seed: int = 0
) -> LinearHead:
    """Fit once with a chosen C, e.g. on train + val after C was chosen on val (more data, same recipe)."""
    return _StandardizedLogisticRegression(x, y, num_classes, balanced=balanced, seed=seed).fit(c)


class _StandardizedLogisticRegression:
    """sklearn's L-BFGS logistic regression on standardised inputs, warm-started from one C to the next."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int, *, balanced: bool, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression  # deferred: see SKLEARN_MODULES

        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0)
        self.scale[self.scale < 1e-6] = 1.0  # constant features: weights stay ~0 under L2, keep them finite
        self.z, self.y, self.num_classes = (x - self.mean) / self.scale, y, num_classes
        self.model = LogisticRegression(
            max_iter=2000, class_weight="balanced" if balanced else None, warm_start=True, random_state=seed
        )

    def fit(self, c: float) -> LinearHead:
        from sklearn.exceptions import ConvergenceWarning

        self.model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(self.z, self.y)
        return _fold_standardization(self.model, self.mean, self.scale, self.num_classes)


def _fold_standardization(model, mean: np.ndarray, scale: np.ndarray, num_classes: int) -> LinearHead:
    """Turn sklearn's coefficients on standardised inputs into a softmax head on raw embeddings."""
    weight = model.coef_ / scale  # (K, D); K == 1 for two classes
    bias = model.intercept_ - weight @ mean
    if num_classes == 2 and weight.shape[0] == 1:
        # sigmoid(z) == softmax([-z/2, z/2])[1]: a symmetric two-row head gives identical probabilities.
        weight = np.vstack([-weight[0] / 2, weight[0] / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    return LinearHead(weight=weight.astype(np.float32), bias=bias.astype(np.float32))
