"""What the report shows of a multi-label run, read from its files: label sets, baselines, precision–recall curves.

A multi-label run's `predictions.csv` has the columns of a single-label run's, but `label` and `predicted` hold
label sets joined by `tlearn.evaluation.tasks.LABEL_SET_SEPARATOR` and the thresholds are per class (in
`metrics.json`). Accuracy's
confusion matrix and calibration do not apply; what does is how well each class's probability ranks its images
(precision–recall, AP) and which images got the most wrong label sets. Pure functions of rows and metrics: the
page adds thumbnails and draws the figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlearn.errors import TlearnError
from tlearn.evaluation.multilabel import worst_label_sets
from tlearn.evaluation.tasks import MULTI_LABEL
from tlearn.runs.layout import PREDICTIONS_FILE


def label_set(cell: str) -> list[str]:
    """The labels of one `label` or `predicted` cell, in the order written (an empty cell: no label).

    Example:
        >>> label_set("pool|garage"), label_set("")
        (['pool', 'garage'], [])
    """
    return MULTI_LABEL.label_names(cell)


def label_targets(rows: Sequence[dict[str, str]], classes: Sequence[str]) -> np.ndarray:
    """(N, K) 0/1 indicators of the given label sets of prediction rows.

    Raises:
        TlearnError: a row names a label that is not among the classes (predictions.csv and metrics.json
            come from different runs).
    """
    index = {name: k for k, name in enumerate(classes)}
    targets = np.zeros((len(rows), len(classes)), dtype=np.int8)
    for i, row in enumerate(rows):
        for name in label_set(row["label"]):
            if name not in index:
                raise TlearnError(
                    f"{PREDICTIONS_FILE}: {row['path']} is labelled {name!r}, which is not among the run's classes "
                    f"({', '.join(classes)}); the file does not belong to this run's metrics.json"
                )
            targets[i, index[name]] = 1
    return targets


def class_probabilities(rows: Sequence[dict[str, str]], classes: Sequence[str]) -> np.ndarray:
    """(N, K) the probability of every class (the `p_<class>` columns) of prediction rows."""
    matrix = np.array([[float(row[f"p_{name}"]) for name in classes] for row in rows], dtype=np.float64)
    return matrix.reshape(len(rows), len(classes))


def thresholds(metrics: dict[str, Any]) -> list[float]:
    """Each class's decision threshold, in class order (as measured: from the split's per-class metrics)."""
    return [float(metrics["per_class"][name]["threshold"]) for name in metrics["classes"]]


def wrong_label_sets(rows: Sequence[dict[str, str]]) -> int:
    """How many rows' predicted label set differs from the given one (the order within a set does not count)."""
    return sum(set(label_set(row["label"])) != set(label_set(row["predicted"])) for row in rows)


def multilabel_baseline(metrics: dict[str, Any], rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    """What answers that ignore the image score on the same split.

    A ranking that ignores the image has, in expectation, an average precision equal to the class's share of
    positive images; always answering the split's most common label set is the best constant subset accuracy;
    answering no label at all has a Hamming loss of the labels per image over the classes.
    """
    n = metrics.get("n") or len(rows)
    shares = [values["support"] / n for values in metrics["per_class"].values() if n and values["support"]]
    counts = Counter(frozenset(label_set(row["label"])) for row in rows)
    common, common_count = counts.most_common(1)[0] if counts else (frozenset(), 0)
    ordered = [name for name in metrics["classes"] if name in common]
    return {
        "chance_map": float(np.mean(shares)) if shares else None,
        "common_set": ", ".join(ordered) if ordered else "no label",
        "common_set_accuracy": common_count / len(rows) if rows else None,
        "empty_hamming": metrics["label_cardinality"] / len(metrics["classes"])
        if "label_cardinality" in metrics
        else None,
    }


@dataclass(frozen=True)
class ClassCurve:
    """One class's precision–recall curve over every threshold, and the point of the model's own threshold."""

    name: str
    recall: np.ndarray  # (M,) decreasing, as scikit-learn returns it
    precision: np.ndarray  # (M,)
    average_precision: float
    threshold: float
    point: tuple[float, float]  # (recall, precision) of the images whose probability reaches `threshold`
    positive_share: float  # the precision of a ranking that ignores the image


def precision_recall_curves(
    targets: np.ndarray, probabilities: np.ndarray, class_thresholds: Sequence[float], classes: Sequence[str]
) -> list[ClassCurve]:
    """The precision–recall curve of every class that has positive images on the split (others have none).

    Args:
        targets: (N, K) 0/1 indicators of the given labels.
        probabilities: (N, K) the model's probabilities.
        class_thresholds: per class, the probability from which the model gives the label.
        classes: class names in column order.

    Example:
        >>> curve = precision_recall_curves(np.array([[1], [0]]), np.array([[0.9], [0.2]]), [0.5], ["pool"])[0]
        >>> curve.point, curve.average_precision
        ((1.0, 1.0), 1.0)
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    curves = []
    truth = np.asarray(targets) > 0
    for k, name in enumerate(classes):
        positives = int(truth[:, k].sum())
        if not positives:
            continue
        precision, recall, _ = precision_recall_curve(truth[:, k], probabilities[:, k])
        answered = probabilities[:, k] >= class_thresholds[k]
        hits = int((answered & truth[:, k]).sum())
        point = (hits / positives, hits / int(answered.sum()) if answered.any() else 0.0)
        curves.append(
            ClassCurve(
                name=name,
                recall=recall,
                precision=precision,
                average_precision=float(average_precision_score(truth[:, k], probabilities[:, k])),
                threshold=float(class_thresholds[k]),
                point=point,
                positive_share=positives / len(truth),
            )
        )
    return curves


def worst_label_set_rows(rows: Sequence[dict[str, str]], metrics: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The `count` images whose label sets were most wrong (`worst_label_sets`), worst first, each with what
    was right, missed and added.

    Returns:
        Per image: `row`, `error` (summed distance of the wrong answers from their thresholds), `given` and
        `predicted` (label lists, class order and as written), `missed` and `added` ((label, probability)
        pairs: given but not predicted, predicted but not given).
    """
    classes = metrics["classes"]
    targets = label_targets(rows, classes)
    probabilities = class_probabilities(rows, classes)
    worst = []
    for index, error in worst_label_sets(targets, probabilities, thresholds(metrics), count):
        row = rows[index]
        given, predicted = label_set(row["label"]), label_set(row["predicted"])
        worst.append(
            {
                "row": row,
                "error": error,
                "given": given,
                "predicted": predicted,
                "missed": [(name, float(row[f"p_{name}"])) for name in given if name not in predicted],
                "added": [(name, float(row[f"p_{name}"])) for name in predicted if name not in given],
            }
        )
    return worst
