"""Classes that are hard to tell apart, from out-of-fold predictions.

For each pair of classes: how many images of one were predicted as the other (both ways, by heads that never
saw them), and how much probability the heads moved between the two on average. The second number separates
pairs even when no answer flips, which matters on small data sets. A pair high on this table wants more
images, a clearer definition, or merging; label errors between the two show up here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LISTED_PAIRS = 20
MIN_SHARED_PROBABILITY = 0.01  # pairs below this, and never confused, are not listed


def class_overlap(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """The class pairs sorted from hardest to separate: confusions both ways, their rate, the shared probability.

    Args:
        probabilities: (N, K) out-of-fold probabilities.
        labels: (N,) given class indices.
        classes: class names in index order.

    Example:
        >>> rows = class_overlap(out_of_fold, labels, ["ants", "bees"])  # doctest: +SKIP
        >>> rows[0]["classes"], rows[0]["confusion_rate"]  # doctest: +SKIP
        (['ants', 'bees'], 0.06)
    """
    from sklearn.metrics import confusion_matrix  # deferred: sklearn.metrics takes a second to import

    num_classes = len(classes)
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, labels=np.arange(num_classes))  # rows = given class
    support = np.bincount(labels, minlength=num_classes)
    # moved[a, b]: total probability the heads gave class b on images labelled a.
    moved = np.stack([probabilities[labels == label].sum(axis=0) for label in range(num_classes)])
    rows = []
    for first in range(num_classes):
        for second in range(first + 1, num_classes):
            images = int(support[first] + support[second])
            if images == 0:
                continue
            confused = int(confusion[first, second] + confusion[second, first])
            shared = float((moved[first, second] + moved[second, first]) / images)
            if confused == 0 and shared < MIN_SHARED_PROBABILITY:
                continue
            rows.append(
                {
                    "classes": [classes[first], classes[second]],
                    "first_as_second": int(confusion[first, second]),
                    "second_as_first": int(confusion[second, first]),
                    "images": images,
                    "confusion_rate": confused / images,
                    "shared_probability": shared,
                }
            )
    rows.sort(key=lambda row: (-row["confusion_rate"], -row["shared_probability"], row["classes"]))
    return rows[:LISTED_PAIRS]
