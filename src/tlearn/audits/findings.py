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
from tlearn.audits.label_errors import RELABEL_CONFIDENCE, find_label_issues
from tlearn.audits.neighbours import neighbour_search
from tlearn.audits.outliers import outlier_scores
from tlearn.audits.overlap import class_overlap
from tlearn.data.discovery import SPLITS
from tlearn.errors import DataError
from tlearn.evaluation.intervals import wilson_interval
from tlearn.training.head import DEFAULT_FOLDS, one_blas_thread, select_c

AUDIT_FORMAT = "tlearn-audit"
AUDIT_VERSION = 1
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
    """The audited images: class indices, names and where each image is (relative path, split)."""

    labels: np.ndarray  # (N,)
    classes: list[str]
    relpaths: list[str]
    splits: list[str]
    content_hashes: list[str] | None = None  # to tell byte-identical copies from near-duplicates


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
    labels, classes = table.labels, table.classes
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 2:
        name = classes[int(counts.argmin())]
        raise DataError(
            f"class {name!r} has {counts.min()} readable image(s); the audit cross-validates and needs 2 per class"
        )
    with one_blas_thread():
        grid = {"c_grid": (settings.c,)} if settings.c is not None else {}
        selection = select_c(embeddings, labels, len(classes), folds=settings.folds, seed=settings.seed, **grid)
        probabilities = selection.out_of_fold
        cross_validated = time.perf_counter()
        issues = find_label_issues(probabilities, labels)
        search = neighbour_search(embeddings)  # one search (and index) for duplicates and outliers
        groups = near_duplicate_groups(embeddings, threshold=settings.duplicate_similarity, search=search)
        outliers = outlier_scores(embeddings, labels, len(classes), search)
    correct = int((probabilities.argmax(axis=1) == labels).sum())
    low, high = wilson_interval(correct, len(labels))

    def image(position: int) -> dict[str, Any]:
        predicted = int(probabilities[position].argmax())
        return {
            "path": table.relpaths[position],
            "split": table.splits[position],
            "given": classes[labels[position]],
            "predicted": classes[predicted],
            "p_given": round(float(probabilities[position, labels[position]]), 4),
            "p_predicted": round(float(probabilities[position, predicted]), 4),
        }

    label_issues = [
        {
            **image(position),
            "suggested": classes[issues.suggested[position]],
            "p_suggested": round(float(probabilities[position, issues.suggested[position]]), 4),
            "score": round(1.0 - float(issues.self_confidence[position]), 4),
        }
        for position in issues.flagged
    ]
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
    payload = {
        "format": AUDIT_FORMAT,
        "version": AUDIT_VERSION,
        "classes": classes,
        "images": len(labels),
        "counts": {name: int((labels == index).sum()) for index, name in enumerate(classes)},
        "summary": {
            "label_issues": len(label_issues),
            "estimated_label_errors": issues.estimated_errors,
            "near_duplicate_groups": len(duplicates),
            "duplicate_conflicts": sum(group["conflicting_labels"] for group in duplicates),
            "cross_split_duplicates": sum(group["cross_split"] for group in duplicates),
            "outliers": len(outlier_rows),
            "cv_accuracy": correct / len(labels),
            "cv_accuracy_interval": [low, high],
        },
        "cross_validation": {"folds": selection.folds, "c": selection.c, "correct": correct},
        "settings": {
            **asdict(settings),
            "outlier_fence": round(outliers.fence, 4),
            "neighbours": outliers.neighbours,
            "neighbour_search": search.method,
        },
        "thresholds": {name: round(float(value), 4) for name, value in zip(classes, issues.thresholds, strict=True)},
        "confident_joint": issues.confident_joint.tolist(),
        "label_issues": label_issues,
        "near_duplicates": duplicates,
        "outliers": outlier_rows,
        "class_overlap": class_overlap(probabilities, labels, classes),
        "seconds": {
            "cross_validation": round(cross_validated - started, 3),
            "findings": round(time.perf_counter() - cross_validated, 3),
        },
    }
    return AuditFindings(payload, table, probabilities, issues.ranked())


def _duplicate_group(
    members: list[int], similarity: float, table: ImageTable, probabilities: np.ndarray
) -> dict[str, Any]:
    """A near-duplicate group as audit.json lists it, with the label its members most likely share."""
    labels = sorted({int(table.labels[member]) for member in members})
    # The group is one picture: the label the heads give the most probability to, summed over its members.
    consensus = max(labels, key=lambda label: float(probabilities[members, label].sum()))
    splits = sorted({table.splits[member] for member in members}, key=SPLIT_ORDER.get)
    hashes = {table.content_hashes[member] for member in members} if table.content_hashes else set()
    return {
        "paths": [table.relpaths[member] for member in members],
        "splits": [table.splits[member] for member in members],
        "labels": [table.classes[table.labels[member]] for member in members],
        "similarity": round(similarity, 4),
        "identical": len(hashes) == 1,
        "cross_split": len(splits) > 1,
        "conflicting_labels": len(labels) > 1,
        "consensus": table.classes[consensus],
    }
