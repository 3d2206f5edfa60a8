"""Experiment tracking: every run's scalars as TensorBoard event files in `RUN/tb/`, optionally MLflow too.

TensorBoard files are written with tensorboard's own event writer (the one torch's SummaryWriter wraps),
which needs neither torch nor TensorFlow, so the cached-embedding path stays torch-free.
`tensorboard --logdir RUN` shows them. With an MLflow tracking URI (a server, or a local folder), params,
metrics and the model directory are logged as an MLflow run as well.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tlearn.errors import TlearnError


class Tracker:
    """Logs scalars per step to TensorBoard (and MLflow when `mlflow_uri` is set).

    Example:
        >>> with Tracker(Path("run/tb")) as tracker:  # doctest: +SKIP
        ...     tracker.log_metrics({"val/accuracy": 0.95}, step=1)
    """

    def __init__(self, tb_dir: Path | None, *, mlflow_uri: str | None = None, run_name: str = "tlearn") -> None:
        self._writer = None
        if tb_dir is not None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            tb_dir.mkdir(parents=True, exist_ok=True)
            self._writer = EventFileWriter(str(tb_dir))
        self._mlflow = None
        if mlflow_uri:
            try:
                import mlflow
            except ImportError:
                raise TlearnError("--mlflow needs the mlflow package: pip install 'tlearn[mlflow]'") from None
            if "://" not in mlflow_uri or mlflow_uri.startswith("file:"):
                # A local `mlruns` folder: MLflow 3 keeps its file store behind this explicit opt-in.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(mlflow_uri)
            mlflow.set_experiment("tlearn")
            mlflow.start_run(run_name=run_name)
            self._mlflow = mlflow

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Hyper-parameters (MLflow only; TensorBoard scalars have no place for them)."""
        if self._mlflow is not None:
            self._mlflow.log_params({key: str(value) for key, value in params.items()})

    def log_metrics(self, metrics: Mapping[str, float | None], *, step: int) -> None:
        """Scalars at a step (epoch); None values are skipped."""
        values = {tag: float(value) for tag, value in metrics.items() if value is not None}
        if self._writer is not None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
            self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        if self._mlflow is not None:
            self._mlflow.log_metrics({tag.replace("/", "_"): value for tag, value in values.items()}, step=step)

    def log_model(self, model_dir: Path) -> None:
        """The model directory as an MLflow artifact."""
        if self._mlflow is not None:
            self._mlflow.log_artifacts(str(model_dir), artifact_path="model")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
