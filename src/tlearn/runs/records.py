"""Reading a finished run back: what `tlearn train` or `tlearn evaluate` left in its folder.

The report and `tlearn compare` both start from these files, never from the objects of the process that
wrote them, so either works on a run made yesterday or on another machine.

A training run holds `metrics.json`, `predictions.csv`, `history.csv`, `data_report.json`, `run.json` and
`model/`; an evaluation holds `metrics.json`, `predictions.csv`, `data_report.json` and `evaluation.json`,
which names the model it evaluated and carries that model's config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tlearn.data.shards import is_file_or_member
from tlearn.errors import ModelFileError, TlearnError
from tlearn.evaluation.tasks import Task, measured_by
from tlearn.runs.layout import RunFolder, report_split
from tlearn.runs.lifecycle import settle_interrupted
from tlearn.runs.model_dir import WEIGHTS_FILE, ModelConfig, read_config
from tlearn.runs.summary import EvaluationSummary, RunSummary, read_evaluation_summary, read_run_summary
from tlearn.util import atomic

# One sample image's answer from the original ImageNet model: (class name, probability) pairs, best first.
ImagenetAnswer = list[tuple[str, float]]


@dataclass
class RunRecords:
    """The files of one run or evaluation folder, parsed.

    Example:
        >>> records = read_run("runs/ants")  # doctest: +SKIP
        >>> records.split, records.metrics[records.split]["accuracy"]  # doctest: +SKIP
        ('test', 0.96)
    """

    folder: Path
    metrics: dict[str, dict[str, Any]]  # split → metrics.json values
    predictions: list[dict[str, str]]  # rows of predictions.csv
    data_report: dict[str, Any]
    history: list[dict[str, Any]]  # rows of history.csv with numbers parsed (empty for an evaluation)
    summary: RunSummary | None  # run.json of a training run (None for an evaluation)
    evaluation: EvaluationSummary | None  # evaluation.json of an evaluation (None for a training run)
    model_path: Path | None  # the model directory (or an evaluation's exported model file), if known
    model_config: ModelConfig | None
    imagenet: dict[str, Any]  # imagenet.json: {"answers": {relpath: ImagenetAnswer}} or {"reason": why none}
    audit: dict[str, Any]  # audit.json of a training run (empty for an evaluation or an older run)

    @property
    def is_evaluation(self) -> bool:
        """True for a `tlearn evaluate` folder, False for a training run."""
        return self.evaluation is not None

    @property
    def task(self) -> Task:
        """The task the figures were measured for (single- or multi-label), as metrics.json says."""
        return measured_by(self.metrics[self.split])

    @property
    def split(self) -> str:
        """The split the run is judged on (see `tlearn.runs.layout.report_split`)."""
        return report_split(list(self.metrics))

    @property
    def classes(self) -> list[str]:
        """Class names in model output order."""
        return list(self.metrics[self.split]["classes"])

    @property
    def data_root(self) -> Path:
        """The data folder that prediction paths are relative to."""
        return Path(self.data_report["data"])

    def split_predictions(self, split: str) -> list[dict[str, str]]:
        """Rows of predictions.csv for one split (an evaluation's rows carry no split column: all of them)."""
        return [row for row in self.predictions if row.get("split", split) == split]

    def probabilities(self, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """True class indices (N,) and predicted probabilities (N, num_classes) of prediction rows."""
        index = {name: i for i, name in enumerate(self.classes)}
        labels = np.array([index[row["label"]] for row in rows], dtype=np.int64)
        columns = [f"p_{name}" for name in self.classes]
        matrix = np.array([[float(row[column]) for column in columns] for row in rows], dtype=np.float64)
        return labels, matrix.reshape(len(rows), len(columns))

    @property
    def model_bytes(self) -> int | None:
        """Size of the model's weights file."""
        if self.summary is not None and self.summary.model_bytes is not None:
            return self.summary.model_bytes
        if self.model_path is None:
            return None
        weights = self.model_path / WEIGHTS_FILE if self.model_path.is_dir() else self.model_path
        return weights.stat().st_size if weights.is_file() else None


def read_run(folder: str | Path) -> RunRecords:
    """Read a run or evaluation folder.

    Raises:
        TlearnError: the folder holds no metrics.json (not a finished run or evaluation).
    """
    folder = Path(folder).expanduser()
    settle_interrupted(folder)  # a killed --overwrite: read the previous run, put back in place
    files = RunFolder(folder)
    if not files.metrics.is_file():
        raise TlearnError(
            f"{folder}: no metrics.json; expected the folder of `tlearn train --out` or `tlearn evaluate --out`"
        )
    evaluation = read_evaluation_summary(files.evaluation)
    summary = None if evaluation else read_run_summary(files.summary)
    if evaluation:  # the model may be a directory or an exported file; its config travels with the evaluation
        model_path = Path(evaluation.model) if evaluation.model else None
        model_config = ModelConfig.model_validate(evaluation.config)
    else:
        model_path = files.model
        try:
            model_config = read_config(model_path, require_complete=False)
        except ModelFileError:
            model_path, model_config = None, None  # moved or deleted since: the report does without it
    return RunRecords(
        folder=folder,
        metrics=json.loads(files.metrics.read_text(encoding="utf-8")),
        predictions=_csv(files.predictions),
        data_report=_json(files.data_report),
        history=[_parse_history_row(row) for row in _csv(files.history)],
        summary=summary,
        evaluation=evaluation,
        model_path=model_path,
        model_config=model_config,
        imagenet=_json(files.imagenet),
        audit=_json(files.audit),
    )


def split_files(run_dir: Path, split: str) -> list[Path]:
    """The image files of one split of a training run (`splits.json` + the data folder of `config.yaml`)
    that are still there (members of WebDataset shards too); empty when the run or its data folder is gone.

    Example:
        >>> split_files(Path("runs/ants"), "val")[:1]  # doctest: +SKIP
        [PosixPath('/data/ants/ants/0013035.jpg')]
    """
    files = RunFolder(run_dir)
    if not files.splits.is_file() or not files.config.is_file():
        return []
    data = (yaml.safe_load(files.config.read_text(encoding="utf-8")) or {}).get("data")
    relpaths = json.loads(files.splits.read_text(encoding="utf-8")).get(split, [])
    return [path for path in (Path(data) / relpath for relpath in relpaths) if is_file_or_member(path)] if data else []


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _csv(path: Path) -> list[dict[str, str]]:
    """Rows as they were before writing (`atomic.write_csv` neutralises cells a spreadsheet would execute)."""
    return atomic.read_csv(path) if path.is_file() else []


def _parse_history_row(row: dict[str, str]) -> dict[str, Any]:
    """history.csv cells back to numbers; empty cells (nothing measured) to None."""
    parsed: dict[str, Any] = {"epoch": int(row["epoch"]), "stage": row["stage"]}
    for column, text in row.items():
        if column not in parsed:
            parsed[column] = float(text) if text else None
    return parsed
