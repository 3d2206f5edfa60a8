"""Experiment tracking: every run's scalars as TensorBoard event files in `RUN/tb/`, optionally MLflow and
Weights & Biases too.

TensorBoard files are written with tensorboard's own event writer (the one torch's SummaryWriter wraps),
which needs neither torch nor TensorFlow, so the cached-embedding path stays torch-free.
`tensorboard --logdir RUN` shows them. With an MLflow tracking URI (a server, or a local folder), params,
metrics and the model directory are logged as an MLflow run as well; with a W&B project, as a W&B run (online,
or written locally with `WANDB_MODE=offline` for `wandb sync` later).

Each destination is a sink with the same four calls; the `Tracker` hands every call to each of them.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from tlearn.errors import TlearnError
from tlearn.util.text import first_line


class Sink(Protocol):
    """One destination of a run's parameters, scalars and model."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, values: Mapping[str, float], step: int) -> None: ...

    def log_model(self, model_dir: Path) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars as TensorBoard event files (parameters and models have no place there)."""

    def __init__(self, tb_dir: Path) -> None:
        _tensorboard_without_tensorflow()
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        tb_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(tb_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self._writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def log_model(self, model_dir: Path) -> None:
        pass

    def close(self) -> None:
        self._writer.close()


def _tensorboard_without_tensorflow() -> None:
    """Make tensorboard's writer use its own file API, never TensorFlow.

    Where TensorFlow is installed, tensorboard's writer imports it (`tensorboard.compat.tf`) for its file API:
    seconds of start-up, and with torch 2.14 and TensorFlow 2.21 in one process a fine-tuning run crashed
    with a segmentation fault. A module named `tensorboard.compat.notf` is tensorboard's own switch to its
    TensorFlow-free stub (what its `no_tensorflow` build target links in).
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


class MlflowSink:
    """An MLflow run in experiment "tlearn": params, metrics (`/` spelled `_`), the model directory."""

    def __init__(self, uri: str, run_name: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise TlearnError("--mlflow needs the mlflow package: pip install 'tlearn[mlflow]'") from None
        if "://" not in uri or uri.startswith("file:"):
            # A local `mlruns` folder: MLflow 3 keeps its file store behind this explicit opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("tlearn")
        mlflow.start_run(run_name=run_name)
        self._mlflow = mlflow

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params({key: str(value) for key, value in params.items()})

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        self._mlflow.log_metrics({tag.replace("/", "_"): value for tag, value in values.items()}, step=step)

    def log_model(self, model_dir: Path) -> None:
        self._mlflow.log_artifacts(str(model_dir), artifact_path="model")

    def close(self) -> None:
        self._mlflow.end_run()


class WandbSink:
    """A Weights & Biases run in `project`: the configuration, the scalars per epoch, the model directory as a
    "model" artifact. Credentials, entity and offline mode come from wandb's own settings (`wandb login`,
    `WANDB_API_KEY`, `WANDB_ENTITY`, `WANDB_MODE=offline`)."""

    def __init__(self, project: str, run_name: str, local_dir: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise TlearnError("--wandb needs the wandb package: pip install 'tlearn[wandb]'") from None
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._run = wandb.init(project=project, name=run_name, dir=str(local_dir), reinit="create_new")
        except Exception as error:  # wandb raises its own types for login, network and permission failures
            raise TlearnError(f"--wandb {project}: cannot start a W&B run ({first_line(error)})") from None
        self._wandb = wandb

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.config.update({key: str(value) for key, value in params.items()}, allow_val_change=True)

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        self._run.log(dict(values), step=step)

    def log_model(self, model_dir: Path) -> None:
        artifact = self._wandb.Artifact(f"{self._run.name or 'tlearn'}-model".replace("/", "-"), type="model")
        artifact.add_dir(str(model_dir))
        self._run.log_artifact(artifact)

    def close(self) -> None:
        self._run.finish()


class Tracker:
    """Logs a run to TensorBoard (when `tb_dir` is given), MLflow (`mlflow_uri`) and W&B (`wandb_project`).

    Example:
        >>> with Tracker(Path("run/tb")) as tracker:  # doctest: +SKIP
        ...     tracker.log_metrics({"val/accuracy": 0.95}, step=1)
    """

    def __init__(
        self,
        tb_dir: Path | None,
        *,
        mlflow_uri: str | None = None,
        wandb_project: str | None = None,
        run_name: str = "tlearn",
    ) -> None:
        self._sinks: list[Sink] = []
        if tb_dir is not None:
            self._sinks.append(TensorBoardSink(tb_dir))
        if mlflow_uri:
            self._sinks.append(MlflowSink(mlflow_uri, run_name))
        if wandb_project:
            local = tb_dir.parent if tb_dir is not None else Path.cwd()
            self._sinks.append(WandbSink(wandb_project, run_name, local))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Hyper-parameters (MLflow and W&B; TensorBoard scalars have no place for them)."""
        for sink in self._sinks:
            sink.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float | None], *, step: int) -> None:
        """Scalars at a step (epoch); None values are skipped."""
        values = {tag: float(value) for tag, value in metrics.items() if value is not None}
        for sink in self._sinks:
            sink.log_metrics(values, step)

    def log_model(self, model_dir: Path) -> None:
        """The model directory as an MLflow artifact and a W&B "model" artifact."""
        for sink in self._sinks:
            sink.log_model(model_dir)

    def close(self) -> None:
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
