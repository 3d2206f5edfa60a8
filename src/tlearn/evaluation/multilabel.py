"""Multi-label metrics in the schema of `metrics.json` (scikit-learn does the counting).

An image may carry any number of labels, so accuracy and the confusion matrix of single-label runs do not
apply. Ranking quality comes first (mean average precision: does every class's probability put its images
first, whatever the threshold?), then the decisions at the model's thresholds: per-class precision, recall
and F1, micro and macro F1, subset accuracy (the whole label set right), Hamming loss (the share of wrong
yes/no answers) and label cardinality (labels per image, given and predicted).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from tlearn.evaluation.intervals import wilson_interval


def multilabel_metrics(
    targets: np.ndarray, probabilities: np.ndarray, thresholds: list[float], classes: list[str]
) -> dict[str, Any]:
    """Metrics of one evaluated split of a multi-label model.

    Args:
        targets: (N, K) 0/1 indicators of the given labels.
        probabilities: (N, K) sigmoid probabilities.
        thresholds: per class, the probability from which the model gives the label.
        classes: class names in column order.

    Returns:
        `task` ("multilabel"), `mAP` (mean over classes with positives of the average precision),
        `subset_accuracy` with `subset_accuracy_interval` (95% Wilson), `micro_f1`, `macro_f1`,
        `hamming_loss`, `label_cardinality` and `predicted_cardinality`, `per_class` ({class: ap, precision,
        recall, f1, support, threshold}), `classes` and `n`. `accuracy` repeats `subset_accuracy` so that
        tables listing accuracy across runs read the strictest figure.

    Example:
        >>> metrics = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[0.9, 0.2], [0.8, 0.7]]),
        ...                              [0.5, 0.5], ["pool", "garage"])
        >>> metrics["subset_accuracy"], metrics["mAP"]
        (1.0, 1.0)
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    truth = np.asarray(targets) > 0
    decided = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
    n = len(truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a small split: undefined scores count as 0
        precision, recall, f1, support = precision_recall_fscore_support(truth, decided, zero_division=0)
        average_precision = _average_precisions(truth, probabilities)
        micro = float(f1_score(truth, decided, average="micro", zero_division=0)) if n else 0.0
        macro = float(f1_score(truth, decided, average="macro", zero_division=0)) if n else 0.0
    exact = int((truth == decided).all(axis=1).sum())
    scored = [value for value in average_precision if value is not None]
    subset_accuracy = exact / n if n else 0.0
    return {
        "task": "multilabel",
        "mAP": float(np.mean(scored)) if scored else 0.0,
        "loss": binary_log_loss(probabilities, truth.astype(np.float64)),
        "subset_accuracy": subset_accuracy,
        "subset_accuracy_interval": [round(bound, 6) for bound in wilson_interval(exact, n)],
        "accuracy": subset_accuracy,
        "micro_f1": micro,
        "macro_f1": macro,
        "hamming_loss": float((truth != decided).mean()) if n else 0.0,
        "label_cardinality": float(truth.sum(axis=1).mean()) if n else 0.0,
        "predicted_cardinality": float(decided.sum(axis=1).mean()) if n else 0.0,
        "per_class": {
            name: {
                "ap": average_precision[k],
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
                "threshold": float(thresholds[k]),
            }
            for k, name in enumerate(classes)
        },
        "classes": list(classes),
        "n": n,
    }


def binary_log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy over images and classes (0 for an empty split)."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()) if len(p) else 0.0


def mean_average_precision(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean over the classes that have positives of scikit-learn's average precision (0 when none has)."""
    scores = [value for value in _average_precisions(np.asarray(targets) > 0, probabilities) if value is not None]
    return float(np.mean(scores)) if scores else 0.0


def _average_precisions(truth: np.ndarray, probabilities: np.ndarray) -> list[float | None]:
    """Per class, scikit-learn's average precision (None for a class without positives: undefined)."""
    from sklearn.metrics import average_precision_score

    return [
        float(average_precision_score(truth[:, k], probabilities[:, k])) if truth[:, k].any() else None
        for k in range(truth.shape[1])
    ]


def choose_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the decision threshold with the highest F1 on these (out-of-fold) probabilities.

    The best F1 on rare classes sits well below 0.5. The threshold lies halfway between the best-F1 probability
    and the next lower one, so a new image scored a little below a validation positive still gets the label;
    0.5 for a class without positives.

    Example:
        >>> [round(value, 3) for value in choose_thresholds(np.array([[0.9], [0.4], [0.2]]), np.array([[1], [1], [0]]))]
        [0.3]
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


def worst_label_sets(
    targets: np.ndarray, probabilities: np.ndarray, thresholds: list[float], count: int
) -> list[tuple[int, float]]:
    """(row, error) of the `count` images whose label sets the model got most wrong, worst first.

    The error is the summed distance of each wrong yes/no answer's probability from its threshold's side:
    an image missing a label the model was sure of ranks above one it nearly got right.
    """
    truth = np.asarray(targets) > 0
    margin = np.asarray(probabilities) - np.asarray(thresholds)[None, :]
    wrong = np.where(truth, np.clip(-margin, 0, None), np.clip(margin, 0, None))
    errors = wrong.sum(axis=1)
    order = [int(i) for i in np.argsort(-errors, kind="stable") if errors[i] > 0]
    return [(row, float(errors[row])) for row in order[:count]]
