"""Every run logs TensorBoard scalars; --mlflow and --wandb log params, metrics and the model as well."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import tlearn


def test_tensorboard_event_files(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True)
    events = EventAccumulator(str(run.path / "tb"))
    events.Reload()
    assert "val/accuracy" in events.Tags()["scalars"]
    assert events.Scalars("val/accuracy")[-1].value == run.metrics["val"]["accuracy"]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="only where TensorFlow is installed")
def test_tensorboard_files_are_written_without_importing_tensorflow(tmp_path):
    """tensorboard's writer imports TensorFlow when it can, and torch + TensorFlow in one fine-tuning process
    crashed (segmentation fault): the writer must use its own file API, in a process that never loaded it."""
    script = (
        "import sys; from pathlib import Path; from tlearn.training.tracking import TensorBoardSink; "
        f"sink = TensorBoardSink(Path({str(tmp_path / 'tb')!r})); sink.log_metrics({{'val/accuracy': 0.5}}, 1); "
        "sink.close(); print('tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    [events] = (tmp_path / "tb").iterdir()
    assert events.name.startswith("events.out.tfevents.") and events.stat().st_size > 0


def test_mlflow_local_store(tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, mlflow=str(store), split=(0.6, 0.2, 0.2))
    client = MlflowClient(tracking_uri=str(store))
    experiment = client.get_experiment_by_name("tlearn")
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.data.params["backbone"] == "auto"
    assert logged.data.metrics["test_accuracy"] == run.metrics["test"]["accuracy"]
    artifacts = {item.path for item in client.list_artifacts(logged.info.run_id, "model")}
    assert artifacts == {"model/config.json", "model/model.safetensors"}


class FakeWandb:
    """Records what a run sends to W&B (the real package is exercised offline below)."""

    def __init__(self):
        self.calls = []
        self.artifacts = []
        outer = self

        class Config:
            def update(self, values, allow_val_change=False):
                outer.calls.append(("config", dict(values)))

        class Run:
            name = "run"
            config = Config()

            def log(self, values, step):
                outer.calls.append(("log", step, dict(values)))

            def log_artifact(self, artifact):
                outer.calls.append(("artifact", artifact.name, artifact.type, sorted(artifact.files)))

            def finish(self):
                outer.calls.append(("finish",))

        class Artifact:
            def __init__(self, name, type):
                self.name, self.type, self.files = name, type, []

            def add_dir(self, path):
                from pathlib import Path

                self.files += [item.name for item in Path(path).iterdir()]

        self.Artifact = Artifact
        self._run = Run()

    def init(self, **options):
        self.calls.append(("init", options))
        return self._run


def test_wandb_gets_the_config_every_epochs_scalars_the_model_and_a_finish(tiny_data, tmp_path, monkeypatch):
    import sys

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, wandb="my-project", split=(0.6, 0.2, 0.2))
    kinds = [call[0] for call in fake.calls]
    assert kinds[0] == "init" and kinds[-1] == "finish" and kinds.count("finish") == 1
    init = fake.calls[0][1]
    assert init["project"] == "my-project" and init["name"] == "run" and init["dir"] == str(run.path)
    [config] = [call[1] for call in fake.calls if call[0] == "config"]
    assert config["backbone"] == "auto" and config["wandb"] == "my-project"
    logged = {key: value for call in fake.calls if call[0] == "log" for key, value in call[2].items()}
    assert logged["test/accuracy"] == run.metrics["test"]["accuracy"]
    [artifact] = [call for call in fake.calls if call[0] == "artifact"]
    assert artifact[2] == "model" and artifact[3] == ["config.json", "model.safetensors"]


def test_wandb_offline_writes_a_run_to_sync_later(tiny_data, tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, wandb="offline-project")
    # wandb's service process writes the record asynchronously and completes it at the latest when it is torn
    # down (a CLI run's exit does that); in this long-lived test process, tear it down before reading.
    import wandb

    wandb.teardown()
    [record] = list((run.path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"val/accuracy" in record.read_bytes()


def test_without_wandb_the_error_says_what_to_install(tiny_data, tmp_path, monkeypatch):
    import sys

    import pytest

    from tlearn.errors import TlearnError

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(TlearnError, match=r"pip install 'tlearn\[wandb\]'"):
        tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, wandb="p")


def test_a_wandb_run_that_cannot_start_is_one_line(tiny_data, tmp_path, monkeypatch):
    import sys

    import pytest

    from tlearn.errors import TlearnError

    fake = FakeWandb()

    def refuse(**options):
        raise PermissionError("api key not configured\nrun `wandb login`")

    fake.init = refuse
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.raises(TlearnError, match=r"^--wandb p: cannot start a W&B run \(api key not configured\)$"):
        tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, wandb="p")
