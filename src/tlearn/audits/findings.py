"""Everything the audit finds in one set of embeddings: label errors, near-duplicates, outliers, class overlap.

A pure function of arrays (`audit_embeddings`), so `tlearn audit` and a training run (which has the same
embeddings in memory) produce the same findings. Its result is the JSON payload of `audit.json`: the audit
page, the review list and a training report's Audit section are all written from that payload alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tlearn.audits.duplicates import DUPLICATE_SIMILARITY, near_duplicate_groups
from tlearn.audits.label_errors import RELABEL_CONFIDENCE, find_task_label_issues
from tlearn.audits.neighbours import neighbour_search
from tlearn.audits.outliers import outlier_scores
from tlearn.audits.overlap import class_overlap
from tlearn.data.discovery import SPLITS
from tlearn.errors import DataError
from tlearn.evaluation.intervals import wilson_interval
from tlearn.evaluation.tasks import SINGLE_LABEL, Task, task_named
from tlearn.training.head import DEFAULT_FOLDS, one_blas_thread, select_c

AUDIT_FORMAT = "tlearn-audit"
AUDIT_VERSION = 2  # 2: multi-label data; thresholds and confident joints per problem (`Task.label_problems`)
SPLIT_ORDER = {name: index for index, name in enumerate((*SPLITS, "all"))}


@dataclass(frozen=True)
class AuditSettings:
    """The audit's knobs; the defaults are the measured ones (see each module and benchmarks/bench_audit.py).

    Example:
        >>> AuditSettings(duplicate_similarity=0.95).folds
        5
    """

    duplicate_similarity: float = DUPLICATE_SIMILARITY  # cosine of centred embeddings
    relabel_confidence: float = RELABEL_CONFIDENCE  # review.csv: relabel at this out-of-fold probability, else drop
    folds: int = DEFAULT_FOLDS  # cross-validation folds for the out-of-fold probabilities
    seed: int = 0
    c: float | None = None  # the heads' L2 strength; None: chosen by cross-validation (a training run gives its own)


@dataclass
class ImageTable:
    """The audited images: their task's targets, the class names and where each image is (relative path, split)."""

    targets: np.ndarray  # (N,) class indices (single-label) or (N, K) 0/1 label indicators (multi-label)
    classes: list[str]
    relpaths: list[str]
    splits: list[str]
    content_hashes: list[str] | None = None  # to tell byte-identical copies from near-duplicates
    task_name: str = SINGLE_LABEL.name  # `Task.name` (a name, not the object: the result cache digests the table)

    @property
    def task(self) -> Task:
        """What the targets mean: one class per image, or a set of labels."""
        return task_named(self.task_name)

    @property
    def members(self) -> np.ndarray:
        """(N, K) 0/1: the classes each image carries."""
        return self.task.target_matrix(self.targets, len(self.classes))

    def cell(self, indices: list[int] | tuple[int, ...]) -> str:
        """Class indices as the review list and the page write them (`a`, or `a|b` for a label set)."""
        return self.task.label_cell([self.classes[k] for k in indices])


@dataclass
class AuditFindings:
    """The payload of `audit.json` plus the arrays behind it (out-of-fold probabilities, the full ranking)."""

    payload: dict[str, Any]
    table: ImageTable  # the audited images, in the order of the arrays below
    out_of_fold: np.ndarray  # (N, K)
    ranking: np.ndarray  # every position, most likely label error first

    def ranked_paths(self) -> list[str]:
        """Every image's relative path, lowest self-confidence (most likely label error) first."""
        return [self.table.relpaths[position] for position in self.ranking]


def audit_embeddings(embeddings: np.ndarray, table: ImageTable, settings: AuditSettings | None = None) -> AuditFindings:
    """Audit (N, D) embeddings of labelled images: out-of-fold probabilities from cross-validated linear
    heads, then confident learning, near-duplicates, outliers and the class-overlap table.

    Raises:
        DataError: a class has fewer than two images (cross-validation needs two).

    Example:
        >>> table = ImageTable(labels, ["ants", "bees"], relpaths, splits)  # doctest: +SKIP
        >>> findings = audit_embeddings(embeddings, table)  # doctest: +SKIP
        >>> findings.payload["summary"]["label_issues"]  # doctest: +SKIP
        3
    """
    settings = settings or AuditSettings()
    started = time.perf_counter()
    task, classes, targets, membership = table.task, table.classes, table.targets, table.members
    counts = membership.sum(axis=0)
    if counts.min() < 2:
        name = classes[int(counts.argmin())]
        raise DataError(
            f"class {name!r} has {int(counts.min())} readable image(s); the audit cross-validates and needs 2 per class"
        )
    with one_blas_thread():
        grid = {"c_grid": (settings.c,)} if settings.c is not None else {}
        selection = select_c(
            embeddings, targets, len(classes), task=task, folds=settings.folds, seed=settings.seed, **grid
        )
        probabilities = selection.out_of_fold
        cross_validated = time.perf_counter()
        issues = find_task_label_issues(task, probabilities, targets)
        search = neighbour_search(embeddings)  # one search (and index) for duplicates and outliers
        groups = near_duplicate_groups(embeddings, threshold=settings.duplicate_similarity, search=search)
        outliers = outlier_scores(embeddings, membership, search)
    thresholds = task.untuned_thresholds(len(classes))  # the answers at 0.5 for label sets: nothing tuned on them
    answers = [list(task.answer(row, thresholds)) for row in probabilities]
    correct = int(task.right(probabilities, targets, thresholds).sum())
    low, high = wilson_interval(correct, len(targets))

    def image(position: int) -> dict[str, Any]:
        given, predicted, row = task.given(targets[position]), answers[position], probabilities[position]
        return {
            "path": table.relpaths[position],
            "split": table.splits[position],
            "given": table.cell(given),
            "predicted": table.cell(predicted),
            "p_given": round(task.agreement(row, given), 4),
            "p_predicted": round(task.agreement(row, predicted), 4),
        }

    def issue(position: int) -> dict[str, Any]:
        suggested = task.corrected(task.given(targets[position]), issues.suggestions[position])
        return {
            **image(position),
            "suggested": table.cell(suggested),
            "p_suggested": round(task.agreement(probabilities[position], suggested), 4),
            "score": round(1.0 - float(issues.self_confidence[position]), 4),
        }

    label_issues = [issue(position) for position in issues.flagged]
    duplicates = [_duplicate_group(members, similarity, table, probabilities) for members, similarity in groups]
    duplicates.sort(key=lambda group: (not (group["conflicting_labels"] or group["cross_split"]), -group["similarity"]))
    outlier_rows = [
        {
            **image(position),
            "nearest_class": classes[outliers.nearest_class[position]],
            "score": round(float(outliers.scores[position]), 4),
        }
        for position in outliers.flagged
    ]
    answered = task.target_matrix(task.targets(answers, len(classes)), len(classes))
    payload = {
        "format": AUDIT_FORMAT,
        "version": AUDIT_VERSION,
        "classes": classes,
        "task": task.name,
        "images": len(targets),
        "counts": {name: int(counts[index]) for index, name in enumerate(classes)},
        "summary": {
            "label_issues": len(label_issues),
            "estimated_label_errors": issues.estimated_errors,
            "near_duplicate_groups": len(duplicates),
            "duplicate_conflicts": sum(group["conflicting_labels"] for group in duplicates),
            "cross_split_duplicates": sum(group["cross_split"] for group in duplicates),
            "outliers": len(outlier_rows),
            "cv_accuracy": correct / len(targets),
            "cv_accuracy_interval": [low, high],
        },
        "cross_validation": {"folds": selection.folds, "c": selection.c, "correct": correct},
        "settings": {
            **asdict(settings),
            "outlier_fence": round(outliers.fence, 4),
            "neighbours": outliers.neighbours,
            "neighbour_search": search.method,
        },
        # confident learning's per-class thresholds and confident joint, one entry per problem the labels pose
        "label_problems": [
            {
                "thresholds": [round(float(value), 4) for value in problem.thresholds],
                "confident_joint": problem.confident_joint.tolist(),
            }
            for problem in issues.problems
        ],
        "label_issues": label_issues,
        "near_duplicates": duplicates,
        "outliers": outlier_rows,
        "class_overlap": class_overlap(probabilities, membership, answered, classes),
        "seconds": {
            "cross_validation": round(cross_validated - started, 3),
            "findings": round(time.perf_counter() - cross_validated, 3),
        },
    }
    return AuditFindings(payload, table, probabilities, issues.ranked())


def _duplicate_group(
    members: list[int], similarity: float, table: ImageTable, probabilities: np.ndarray
) -> dict[str, Any]:
    """A near-duplicate group as audit.json lists it, with the label (set) its members most likely share."""
    task = table.task
    given = sorted({tuple(task.given(table.targets[member])) for member in members})
    # The group is one picture: of its members' labels, the one the heads back most, summed over the members.
    consensus = max(given, key=lambda labels: sum(task.agreement(probabilities[member], labels) for member in members))
    splits = sorted({table.splits[member] for member in members}, key=SPLIT_ORDER.get)
    hashes = {table.content_hashes[member] for member in members} if table.content_hashes else set()
    return {
        "paths": [table.relpaths[member] for member in members],
        "splits": [table.splits[member] for member in members],
        "labels": [table.cell(task.given(table.targets[member])) for member in members],
        "similarity": round(similarity, 4),
        "identical": len(hashes) == 1,
        "cross_split": len(splits) > 1,
        "conflicting_labels": len(given) > 1,
        "consensus": table.cell(consensus),
    }
