"""`tlearn audit DATA --out DIR`: embed a data folder through the cache, audit it, write the three files.

DIR gets `audit.json` (everything found, machine-readable), `audit.html` (the same for a person, with
thumbnails) and `review.csv` (the list to edit and hand to `tlearn train --review`). The folder follows the
run-folder rules (`tlearn.runs.lifecycle`): never inside DATA, never over files tlearn did not write, replaced
only with `overwrite` (a review someone has started editing is not lost by running the audit again).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlearn.audits.embedded import embed_source
from tlearn.audits.findings import AuditFindings, AuditSettings, ImageTable, audit_embeddings
from tlearn.audits.page import write_audit_page
from tlearn.audits.review import review_rows, write_review
from tlearn.backbones.registry import DEFAULT_BACKBONE, resolve_backbone
from tlearn.data.discovery import discover
from tlearn.errors import DataError
from tlearn.evaluation.tasks import SINGLE_LABEL, task_named
from tlearn.runs.layout import AUDIT_FILE, AUDIT_PAGE, REVIEW_FILE
from tlearn.runs.lifecycle import OutputFolder
from tlearn.util import atomic
from tlearn.util.progress import Progress


@dataclass
class Audit:
    """A finished audit: what it found (the payload of audit.json), the review rows, and where the files are.

    Example:
        >>> audit = tlearn.audit("data/", out="audits/data")  # doctest: +SKIP
        >>> audit.summary["label_issues"], audit.review_csv  # doctest: +SKIP
        (7, PosixPath('audits/data/review.csv'))
    """

    path: Path
    payload: dict[str, Any]
    review: list[dict[str, str]]
    findings: AuditFindings | None = field(default=None, repr=False)

    @property
    def summary(self) -> dict[str, Any]:
        """Counts: label issues, estimated label errors, near-duplicate groups, conflicts, outliers, CV accuracy."""
        return self.payload["summary"]

    @property
    def audit_json(self) -> Path:
        """Everything found, machine-readable."""
        return self.path / AUDIT_FILE

    @property
    def page(self) -> Path:
        """The page for a person: audit.html."""
        return self.path / AUDIT_PAGE

    @property
    def review_csv(self) -> Path:
        """The review list to edit and pass to `tlearn train --review`."""
        return self.path / REVIEW_FILE

    def lines(self) -> list[str]:
        """The console summary, one finding per line."""
        s = self.summary
        low, high = s["cv_accuracy_interval"]
        actions = Counter(row["action"] for row in self.review)
        task = task_named(self.payload.get("task", SINGLE_LABEL.name))
        return [
            f"images: {self.payload['images']} in {len(self.payload['classes'])} classes ({task.title}); "
            f"out-of-fold accuracy {s['cv_accuracy']:.3f} (95% {low:.3f}–{high:.3f}; {task.right_answer})",
            f"likely label errors: {s['label_issues']} (confident learning estimates {s['estimated_label_errors']})",
            f"near-duplicate groups: {s['near_duplicate_groups']} ({s['duplicate_conflicts']} with different labels, "
            f"{s['cross_split_duplicates']} across splits)",
            f"outliers: {s['outliers']}",
            f"review: {len(self.review)} image(s) prefilled ({actions['relabel']} relabel, {actions['drop']} drop, "
            f"{actions['keep']} keep) in {self.review_csv}",
            f"page: {self.page}",
        ]


def audit_folder(
    data: str | Path,
    *,
    out: Path,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    settings: AuditSettings | None = None,
    progress: Progress,
) -> Audit:
    """Audit the labelled images under `data` and write audit.json, audit.html and review.csv into `out`.

    Raises:
        DataError: the data folder is unusable, or a class has fewer than two readable images.
        BackboneError: the backbone cannot be resolved or built.
        RunDirError: `out` cannot be used (see `tlearn.runs.lifecycle`).

    Example:
        >>> audit_folder("data/", out=Path("audits/data"), progress=Progress())  # doctest: +SKIP
    """
    source = discover(data)
    ref = resolve_backbone(backbone, weights)
    with OutputFolder.open(out, kind="audit", overwrite=overwrite, data=source.root):
        embedded = embed_source(source, ref, device=device, progress=progress)
        progress.info(
            f"embeddings: {len(embedded.relpaths) - embedded.computed} cached, {embedded.computed} computed "
            f"({embedded.seconds:.1f} s, backbone {ref.arch})"
        )
        table = ImageTable(
            embedded.targets,
            embedded.classes,
            embedded.relpaths,
            embedded.splits,
            embedded.content_hashes,
            task_name=embedded.task.name,
        )
        try:
            findings = audit_embeddings(embedded.embeddings, table, settings)
        except DataError as error:
            raise DataError(f"{source.root}: {error}") from None
        payload = {
            "format": findings.payload["format"],
            "version": findings.payload["version"],
            "data": str(source.root),
            "backbone": ref.describe(),
            "skipped": embedded.skipped,
            **findings.payload,
        }
        payload["seconds"]["embedding"] = round(embedded.seconds, 3)
        rows = review_rows(payload)
        atomic.write_json(out / AUDIT_FILE, payload)
        write_review(out / REVIEW_FILE, rows)
        write_audit_page(out / AUDIT_PAGE, payload, rows, source.root)
    return Audit(out, payload, rows, findings)
