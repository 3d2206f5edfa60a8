"""The run folder's contract: every file a run or an evaluation writes, and the rows of its tables.

This module is the only place that knows a file name of the run directory; training, evaluation, the
report, `compare` and export all ask it. A run directory holds:

    model/               the trained model (see `tlearn.runs.model_dir`)
    metrics.json         per evaluated split
    history.csv          one `HistoryRow` per epoch (epoch 0: the linear head)
    predictions.csv      one row per evaluated image (`prediction_columns`)
    data_report.json     what the data check found
    splits.json          which file went to which split
    config.yaml          the resolved configuration
    run.json             what training decided (`tlearn.runs.summary`; an evaluation writes evaluation.json)
    imagenet.json        the original ImageNet model's answers for the report's sample images
    audit.json           the data audit (likely label errors, near-duplicates, outliers), review.csv to edit
    report.html, figures/, tb/, checkpoints/
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"
DATA_REPORT_FILE = "data_report.json"
SPLITS_FILE = "splits.json"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "run.json"
EVALUATION_FILE = "evaluation.json"
IMAGENET_FILE = "imagenet.json"
AUDIT_FILE = "audit.json"  # the data audit (a training run's, or `tlearn audit`'s)
AUDIT_PAGE = "audit.html"
REVIEW_FILE = "review.csv"
SELECT_FILE = "select.json"  # `tlearn select`'s ranking
SELECT_PAGE = "select.html"
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
TRACKING_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"  # one folder per fine-tuning stage ("select", "refit")

# Everything a training run may write.
RUN_OUTPUTS = (
    MODEL_DIR,
    METRICS_FILE,
    HISTORY_FILE,
    DATA_REPORT_FILE,
    SPLITS_FILE,
    PREDICTIONS_FILE,
    CONFIG_FILE,
    SUMMARY_FILE,
    IMAGENET_FILE,
    AUDIT_FILE,
    REVIEW_FILE,
    REPORT_FILE,
    FIGURES_DIR,
    CHECKPOINTS_DIR,
    TRACKING_DIR,
)
AUDIT_OUTPUTS = (AUDIT_FILE, AUDIT_PAGE, REVIEW_FILE)  # `tlearn audit --out`
SELECT_OUTPUTS = (SELECT_FILE, SELECT_PAGE)  # `tlearn select --out`
# Everything an evaluation (`tlearn evaluate --out`) may write.
EVALUATION_OUTPUTS = (
    METRICS_FILE,
    PREDICTIONS_FILE,
    DATA_REPORT_FILE,
    EVALUATION_FILE,
    IMAGENET_FILE,
    REPORT_FILE,
    FIGURES_DIR,
)


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run (or evaluation) folder.

    Example:
        >>> RunFolder(Path("runs/ants")).metrics
        PosixPath('runs/ants/metrics.json')
    """

    root: Path

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS_FILE

    @property
    def data_report(self) -> Path:
        return self.root / DATA_REPORT_FILE

    @property
    def splits(self) -> Path:
        return self.root / SPLITS_FILE

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def evaluation(self) -> Path:
        return self.root / EVALUATION_FILE

    @property
    def imagenet(self) -> Path:
        return self.root / IMAGENET_FILE

    @property
    def audit(self) -> Path:
        return self.root / AUDIT_FILE

    @property
    def review(self) -> Path:
        return self.root / REVIEW_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def figures(self) -> Path:
        return self.root / FIGURES_DIR

    @property
    def tracking(self) -> Path:
        return self.root / TRACKING_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def figure(self, name: str) -> Path:
        """A report figure's PNG file."""
        return self.figures / f"{name}.png"


HISTORY_COLUMNS = [
    "epoch",
    "stage",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_second",
    "cpu_percent",
    "rss_mb",
    "gpu_percent",
    "gpu_memory_mb",
]


@dataclass(frozen=True)
class HistoryRow:
    """One row of `history.csv`; None leaves a cell empty (no learning rate for the closed-form head, no
    validation for the final refit on train + val)."""

    epoch: int
    stage: str
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float = 0.0
    train_loss: float | None = None
    train_accuracy: float | None = None
    lr: float | None = None
    images_per_second: float | None = None
    # the hardware over the epoch (`tlearn.util.hardware`): mean CPU use (100 per core), peak memory, the GPU's
    cpu_percent: float | None = None
    rss_mb: float | None = None
    gpu_percent: float | None = None
    gpu_memory_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row in `HISTORY_COLUMNS` order, times rounded for a readable file."""
        values = asdict(self)
        values["seconds"] = round(self.seconds, 3)
        if self.images_per_second is not None:
            values["images_per_second"] = round(self.images_per_second, 2)
        for name in ("cpu_percent", "rss_mb", "gpu_percent", "gpu_memory_mb"):
            if values[name] is not None:
                values[name] = round(values[name], 1)
        return {column: values[column] for column in HISTORY_COLUMNS}


@dataclass(frozen=True)
class EvaluatedSet:
    """A set of images a run or evaluation reports figures on: a key of `metrics.json` and a split of the rows of
    `predictions.csv`.

    Besides the data's own splits, a training run reports "cv": every train and val image scored by a linear
    head that never saw it (the head's cross-validation), and an evaluation of a whole folder reports "all".
    """

    name: str
    splits: tuple[str, ...]  # the data splits whose images it covers, in this order
    description: str  # how the report names it


EVALUATED_SETS = {
    evaluated.name: evaluated
    for evaluated in (
        EvaluatedSet("train", ("train",), "the train split"),
        EvaluatedSet("val", ("val",), "the val split"),
        EvaluatedSet("test", ("test",), "the test split"),
        EvaluatedSet("cv", ("train", "val"), "cross-validation over train + val"),
        EvaluatedSet("all", ("all",), "the whole folder"),
    )
}


def evaluated_set(name: str) -> EvaluatedSet:
    """The evaluated set a `metrics.json` key names (an unknown name: a split of that name).

    Example:
        >>> evaluated_set("cv").splits, evaluated_set("test").description
        (('train', 'val'), 'the test split')
    """
    return EVALUATED_SETS.get(name) or EvaluatedSet(name, (name,), f"the {name} split")


def report_split(splits: Sequence[str]) -> str:
    """The split a run is judged on: its test split when there is one, else the linear head's cross-validation
    over train + val ("cv": more images than val alone), else val; an evaluation's only split otherwise.

    Example:
        >>> report_split(["cv", "val"]), report_split(["val", "test"]), report_split(["all"])
        ('cv', 'test', 'all')
    """
    return next((name for name in ("test", "cv", "val") if name in splits), splits[0])


def prediction_columns(classes: Sequence[str], *, with_split: bool) -> list[str]:
    """The columns of `predictions.csv` (a training run's rows carry their split, an evaluation's do not); the
    rows are the task's (`tlearn.evaluation.tasks.Task.prediction_rows`)."""
    return [
        "path",
        *(["split"] if with_split else []),
        "label",
        "predicted",
        "confidence",
        *[f"p_{name}" for name in classes],
    ]


def sample_rows(rows: Sequence[dict[str, str]], count: int) -> list[dict[str, str]]:
    """Up to `count` rows taking each class in turn (in path order within a class): the report's samples.

    Training and evaluation pick the same rows to compute the original ImageNet model's answers for, and
    the report shows exactly those.
    """
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in sorted(rows, key=lambda row: row["path"]):
        by_class.setdefault(row["label"], []).append(row)
    chosen: list[dict[str, str]] = []
    for depth in range(count):
        chosen += [members[depth] for members in by_class.values() if depth < len(members)]
        if len(chosen) >= count or all(depth >= len(members) for members in by_class.values()):
            break
    return chosen[:count]
