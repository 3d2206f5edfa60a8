"""Likely label errors by confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021), on out-of-fold probabilities.

The method, in its published steps:

1. Per-class thresholds: t_j = the mean probability of class j over the images labelled j (the model's
   average self-confidence on that class), so an over- or under-confident class is judged on its own scale.
2. Confident joint C[i, j]: an image labelled i counts towards j when p(j | x) ≥ t_j (the most probable such j
   when several pass); images that pass no threshold are not counted.
3. Calibration: each row of C is rescaled to the number of images labelled i, then the matrix to sum to one:
   Q[i, j] estimates the joint distribution of given label i and true label j. The off-diagonal mass times N
   is the estimated number of label errors.
4. Pruning by noise rate: for every off-diagonal (i, j), the round(N Q[i, j]) images labelled i with the
   largest margin p(j | x) - p(i | x) are flagged; an image whose most probable class is its given label is
   never flagged (cleanlab's default filter).

Issues are ranked by self-confidence, p(given label | x), lowest first: the ranking the paper recommends.

Implemented here (about 60 lines of NumPy) rather than called from cleanlab, because it measured the same and
cheaper: `python benchmarks/bench_label_errors.py` (10% of the training labels flipped, 5 seeds, the same
out-of-fold probabilities given to both) flags the very same images on hymenoptera and pools, differs by 0-2
of ~69 on mri and 1-5 of ~57 on signs, with precision / recall 0.427 / 0.808 (cleanlab 2.9: 0.420 / 0.820) on
signs and equal elsewhere; cleanlab took 0.5 s per search and seconds to import (pandas with it), on every
`tlearn train`, against under 1 ms here. The out-of-fold probabilities come from tlearn's own cross-validated
heads (`tlearn.training.head.select_c`). `tests/audits/test_label_errors.py` checks each step against the
paper's definitions on hand-computed examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlearn.evaluation.tasks import Task

# A flagged image is prefilled "relabel" in review.csv when its out-of-fold probability for the suggested
# class reaches this; below it, "drop" (pruning, the action the paper evaluates, loses one image instead of
# risking a second wrong label).
RELABEL_CONFIDENCE = 0.9


@dataclass
class LabelIssues:
    """Confident learning's estimates and the images it flags."""

    thresholds: np.ndarray  # (K,) per-class self-confidence thresholds t_j
    confident_joint: np.ndarray  # (K, K) counts, rows = given label, columns = likely true label
    joint: np.ndarray  # (K, K) calibrated estimate of p(given = i, true = j); sums to 1
    flagged: np.ndarray  # positions of likely label errors, most likely first
    self_confidence: np.ndarray  # (N,) p(given label | x), the ranking score (low: suspicious)
    suggested: np.ndarray  # (N,) most probable class other than the given one

    @property
    def estimated_errors(self) -> int:
        """The number of label errors the calibrated joint implies (N x its off-diagonal mass)."""
        return round(len(self.self_confidence) * (1.0 - float(np.trace(self.joint))))

    def ranked(self) -> np.ndarray:
        """Every position, most suspicious first (lowest self-confidence)."""
        return np.argsort(self.self_confidence, kind="stable")


def per_class_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the mean p(j | x) over the images labelled j (1.0 for a class without images: nothing passes).

    Example:
        >>> per_class_thresholds(np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]]), np.array([0, 0, 1])).tolist()
        [0.8, 0.8]
    """
    num_classes = probabilities.shape[1]
    return np.array([probabilities[labels == j, j].mean() if np.any(labels == j) else 1.0 for j in range(num_classes)])


def confident_joint(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """C[i, j]: images labelled i whose most probable class among those above their threshold is j.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
        >>> confident_joint(p, np.array([0, 0, 1]), np.array([0.6, 0.75])).tolist()
        [[1, 0], [0, 1]]
    """
    num_classes = probabilities.shape[1]
    above = probabilities >= thresholds  # (N, K)
    counted = above.any(axis=1)
    likely_true = np.where(above, probabilities, -1.0).argmax(axis=1)
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(joint, (labels[counted], likely_true[counted]), 1)
    return joint


def calibrate_joint(counts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Q: each row of the confident joint rescaled to its class's image count, then normalised to sum to 1."""
    num_classes = counts.shape[0]
    per_class = np.bincount(labels, minlength=num_classes).astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True).astype(np.float64)
    calibrated = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0) * per_class[:, None]
    empty = (rows[:, 0] == 0) & (per_class > 0)
    calibrated[empty, empty.nonzero()[0]] = per_class[empty]  # no confident image: assume the labels are right
    return calibrated / max(calibrated.sum(), 1e-12)


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Flag likely label errors from out-of-fold probabilities (N, K) and given labels (N,).

    Example:
        >>> issues = find_label_issues(selection.out_of_fold, labels)  # doctest: +SKIP
        >>> issues.flagged[:5], issues.estimated_errors  # doctest: +SKIP
    """
    n, num_classes = probabilities.shape
    thresholds = per_class_thresholds(probabilities, labels)
    counts = confident_joint(probabilities, labels, thresholds)
    joint = calibrate_joint(counts, labels)
    rows = np.arange(n)
    self_confidence = probabilities[rows, labels]
    others = probabilities.copy()
    others[rows, labels] = -1.0
    suggested = others.argmax(axis=1)

    flagged = np.zeros(n, dtype=bool)
    for given in range(num_classes):
        members = np.flatnonzero(labels == given)
        for true in range(num_classes):
            budget = round(n * float(joint[given, true])) if true != given else 0
            if budget == 0 or len(members) == 0:
                continue
            margin = probabilities[members, true] - probabilities[members, given]
            flagged[members[np.argsort(-margin, kind="stable")[:budget]]] = True
    flagged &= probabilities.argmax(axis=1) != labels
    positions = np.flatnonzero(flagged)
    positions = positions[np.argsort(self_confidence[positions], kind="stable")]
    return LabelIssues(thresholds, counts, joint, positions, self_confidence, suggested)


@dataclass
class TaskLabelIssues:
    """Confident learning over every problem a task's labels pose (`Task.label_problems`): the one K-class
    problem of single-label data, or one yes/no problem per class of multi-label data. An image is flagged when
    any problem flags it; its self-confidence is its lowest over the problems (for multi-label data, the class
    decision the heads doubt most), which ranks the flags, lowest first.

    Multi-label data is split into per-class problems as cleanlab's `multilabel_classification.filter` does,
    and searched with the single-label code above: `python benchmarks/bench_label_errors.py --multilabel`
    compares the two on mosaics of the shared sets with planted errors.
    """

    problems: list[LabelIssues]
    flagged: np.ndarray  # positions flagged by any problem, lowest self-confidence first
    self_confidence: np.ndarray  # (N,) the lowest p(given answer | x) over the problems
    suggestions: list[dict[int, int]]  # per position: problem index → the answer it suggests, where it flagged

    @property
    def estimated_errors(self) -> int:
        """Label errors the calibrated joints imply, summed over the problems (for multi-label data, wrong
        class decisions: an image may carry several)."""
        return sum(problem.estimated_errors for problem in self.problems)

    def ranked(self) -> np.ndarray:
        """Every position, most suspicious first (lowest self-confidence)."""
        return np.argsort(self.self_confidence, kind="stable")


def find_task_label_issues(task: Task, probabilities: np.ndarray, targets: np.ndarray) -> TaskLabelIssues:
    """Flag likely label errors of any task from out-of-fold probabilities (N, K) and its targets.

    Example:
        >>> from tlearn.evaluation.tasks import MULTI_LABEL
        >>> p = np.array([[0.9, 0.8], [0.8, 0.9], [0.1, 0.9], [0.9, 0.2], [0.8, 0.1], [0.2, 0.9]])
        >>> found = find_task_label_issues(MULTI_LABEL, p, np.array([[1, 1], [1, 1], [0, 1], [1, 0], [1, 1], [0, 1]]))
        >>> found.flagged.tolist(), found.suggestions[4]  # image 4: labelled with class 1, which p doubts
        ([4], {1: 0})
    """
    problems = [find_label_issues(scores, given) for scores, given in task.label_problems(probabilities, targets)]
    self_confidence = np.min([problem.self_confidence for problem in problems], axis=0)
    suggestions: list[dict[int, int]] = [{} for _ in range(len(self_confidence))]
    for index, problem in enumerate(problems):
        for position in problem.flagged:
            suggestions[position][index] = int(problem.suggested[position])
    flagged = np.flatnonzero([bool(suggestion) for suggestion in suggestions])
    flagged = flagged[np.argsort(self_confidence[flagged], kind="stable")]
    return TaskLabelIssues(problems, flagged, self_confidence, suggestions)
