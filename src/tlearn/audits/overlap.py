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


def class_overlap(
    probabilities: np.ndarray, given: np.ndarray, answered: np.ndarray, classes: list[str]
) -> list[dict[str, Any]]:
    """The class pairs sorted from hardest to separate: confusions both ways, their rate, the shared probability.

    Args:
        probabilities: (N, K) out-of-fold probabilities.
        given: (N, K) 0/1, the classes each image is labelled with (`Task.target_matrix`).
        answered: (N, K) 0/1, the classes the heads answered for it.
        classes: class names in index order.

    An image counts as "a as b" when it carries a and not b and the heads missed a and answered b: for
    single-label data, the confusion matrix.

    Example:
        >>> given, answered = np.eye(2)[labels], np.eye(2)[out_of_fold.argmax(axis=1)]  # doctest: +SKIP
        >>> rows = class_overlap(out_of_fold, given, answered, ["ants", "bees"])  # doctest: +SKIP
        >>> rows[0]["classes"], rows[0]["confusion_rate"]  # doctest: +SKIP
        (['ants', 'bees'], 0.06)
    """
    num_classes = len(classes)
    given, answered = given > 0, answered > 0
    # swapped[a, b]: images that carry a and not b, answered b and not a (rows = given class).
    swapped = (given & ~answered).T.astype(np.int64) @ (answered & ~given).astype(np.int64)
    # moved[a, b]: total probability the heads gave class b on images labelled a and not b.
    moved = given.T.astype(np.float64) @ probabilities - (given.T.astype(np.float64) @ (probabilities * given))
    rows = []
    for first in range(num_classes):
        for second in range(first + 1, num_classes):
            images = int((given[:, first] | given[:, second]).sum())
            if images == 0:
                continue
            confused = int(swapped[first, second] + swapped[second, first])
            shared = float((moved[first, second] + moved[second, first]) / images)
            if confused == 0 and shared < MIN_SHARED_PROBABILITY:
                continue
            rows.append(
                {
                    "classes": [classes[first], classes[second]],
                    "first_as_second": int(swapped[first, second]),
                    "second_as_first": int(swapped[second, first]),
                    "images": images,
                    "confusion_rate": confused / images,
                    "shared_probability": shared,
                }
            )
    rows.sort(key=lambda row: (-row["confusion_rate"], -row["shared_probability"], row["classes"]))
    return rows[:LISTED_PAIRS]
