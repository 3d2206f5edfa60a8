"""`run.json` and `evaluation.json` as typed records: what a training run decided and what an evaluation measured.

One owner for each file: training builds a `RunSummary` and writes it here, `tlearn evaluate` an
`EvaluationSummary`; the report, `tlearn compare` and the Python API read them back through these types and
never index the JSON by key. A file written by an earlier version reads back with the fields it lacks at their
defaults; unknown keys are ignored, so an older tlearn reads a newer file too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tlearn.util import atomic


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class CSearchRow(_Record):
    """One inverse L2 strength the linear head tried, and how it scored out of fold."""

    c: float
    cv_loss: float
    cv_accuracy: float  # images answered right (a multi-label image: its whole label set at 0.5)


class BackboneTrial(_Record):
    """One candidate backbone of `--backbone auto`: its linear head cross-validated on train + val."""

    name: str
    cv_accuracy: float  # mean over the draws of the folds
    cv_accuracy_draws: list[float] = Field(default_factory=list)
    cv_accuracy_interval: list[float] = Field(default_factory=list)  # 95% Wilson interval of the mean
    cv_loss: float = 0.0
    c: float = 1.0
    images: int = 0
    seconds: float = 0.0  # embedding and cross-validation
    chosen: bool = False


class HeadRecord(_Record):
    """The linear head: its C search by cross-validation over train + val and what it reached there."""

    c: float
    folds: int
    cross_validated_images: int
    balanced_loss: bool = False
    candidates: list[CSearchRow] = Field(default_factory=list)
    cv_accuracy: float
    thresholds: list[float] | None = None  # multi-label: per class, chosen on the out-of-fold probabilities
    seconds: float = 0.0


class RefitRecord(_Record):
    """A fine-tuning refit on more images with the validated schedule (train + val, or every split)."""

    epochs: int
    seconds: float
    resumed_after_epoch: int | None = None


class FinetuneRecord(_Record):
    """Fine-tuning validated on val: the epoch kept, how long it took, and the refits that followed."""

    best_epoch: int
    epochs: int
    images_per_second: float = 0.0
    seconds: float = 0.0
    peak_gpu_memory_mb: float | None = None
    budget_seconds: float | None = None
    resumed_after_epoch: int | None = None
    refits: dict[str, RefitRecord] = Field(default_factory=dict)  # "refit" (train + val), "refit-all"
    compute_kept: float | None = None  # `--prune`: multiply-accumulates per image after / before pruning


class SelectionRecord(_Record):
    """The linear head against fine-tuning on the same validation images, and which one was kept."""

    chosen: str  # "linear" or "finetune": what the comparison chose (`tlearn.training.selection.choose`)
    kept: str  # what was shipped (differs from `chosen` only under --mode finetune)
    images: int
    linear_accuracy: float
    finetune_accuracy: float
    linear_loss: float
    finetune_loss: float
    only_linear_right: int
    only_finetune_right: int
    p_value: float
    reason: str


class TeacherRecord(_Record):
    """What a run with `--teacher` learnt from (knowledge distillation) and how the teacher fared on the run's
    own images."""

    model: str  # the teacher as given (a path or hf-hub:OWNER/NAME)
    backbone: str  # the teacher's backbone
    mode: str  # the teacher's kind of model: linear or finetune
    engine: str  # what computed its answers: torch or onnx
    share: float  # the teacher's share of the fine-tuning targets
    taught_images: int  # labelled training images whose targets mix label and teacher (the validated stage)
    unlabelled_images: int = 0  # images of --unlabelled learnt from, with the teacher's answers as targets
    unlabelled_skipped: int = 0  # of --unlabelled: unreadable, or copies of the run's labelled images
    accuracy: dict[str, float] = Field(default_factory=dict)  # split → the teacher's accuracy on the run's images
    seconds: float = 0.0
    starts_pruning: bool = False  # `--prune`: fine-tuning started from the teacher's own network, pruned


class EmbeddingRecord(_Record):
    """How the frozen backbone's embeddings were obtained."""

    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    corrupt_cache_entries: int = 0
    engine: str | None = None
    files_read: int = 0
    onnx_exported: bool = False


class RunSummary(_Record):
    """`run.json`: what a training run decided, how long it took and what it shipped."""

    tlearn_version: str = ""
    task: str = "multiclass"
    mode: str = "auto"  # what was asked for: auto, linear or finetune
    model: str = "linear"  # what was shipped: linear or finetune
    final_fit: str | None = None  # what the shipped model learnt from: train, train+val or all
    backbone: dict[str, str] = Field(default_factory=dict)
    backbone_trials: list[BackboneTrial] = Field(default_factory=list)  # `--backbone auto`: every candidate
    backbone_choice: str | None = None  # why the backbone was chosen (auto)
    classes: list[str] = Field(default_factory=list)
    world_size: int = 1
    embedding: EmbeddingRecord = EmbeddingRecord()
    head: HeadRecord | None = None
    finetune: FinetuneRecord | None = None
    finetune_skipped: str | None = None  # why fine-tuning did not run
    selection: SelectionRecord | None = None
    teacher: TeacherRecord | None = None  # --teacher: what the fine-tuned network learnt from besides the labels
    seconds: float | None = None
    model_bytes: int | None = None

    @property
    def epochs(self) -> int:
        """Fine-tuning epochs run, refits included (0 for a linear head)."""
        if self.finetune is None or self.model != "finetune":
            return 0
        return self.finetune.epochs + sum(refit.epochs for refit in self.finetune.refits.values())


class EvaluationSummary(_Record):
    """`evaluation.json`: which model `tlearn evaluate` measured, on what, and how."""

    model: str | None = None  # the model directory or exported file
    data: str | None = None
    split: str = "all"
    tta: bool = False
    seconds: float = 0.0
    # the evaluated model's config.json ("model_config" in the file; pydantic reserves that attribute name)
    config: dict[str, Any] = Field(default_factory=dict, alias="model_config")


def write_summary(path: Path, summary: RunSummary | EvaluationSummary) -> None:
    """Write a record atomically as indented JSON."""
    atomic.write_json(path, summary.model_dump(mode="json", by_alias=True))


def read_run_summary(path: Path) -> RunSummary | None:
    """`run.json` of a training run (None when the file is absent)."""
    return RunSummary.model_validate(_upgrade(_json(path))) if path.is_file() else None


def read_evaluation_summary(path: Path) -> EvaluationSummary | None:
    """`evaluation.json` of an evaluation (None when the file is absent)."""
    return EvaluationSummary.model_validate(_json(path)) if path.is_file() else None


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """A run.json of tlearn 0.1's first layout: stages in a `stages` dict, refits beside the fine-tuning figures,
    `cv_subset_accuracy` for multi-label C rows."""
    stages = values.get("stages")
    if not isinstance(stages, dict):
        return values
    upgraded = {key: value for key, value in values.items() if key != "stages"}
    upgraded.setdefault("finetune_skipped", stages.get("finetune_skipped"))
    if isinstance(stages.get("selection"), dict):
        upgraded["selection"] = stages["selection"]
    finetune = values.get("finetune") or None
    if finetune:
        refits = {name: finetune[name] for name in ("refit", "refit-all") if isinstance(finetune.get(name), dict)}
        upgraded["finetune"] = {**finetune, "refits": refits}
    head = values.get("head")
    if isinstance(head, dict):
        rows = [
            {**row, "cv_accuracy": row.get("cv_accuracy", row.get("cv_subset_accuracy", 0.0))}
            for row in head.get("candidates", [])
        ]
        upgraded["head"] = {**head, "candidates": rows}
    return upgraded
