"""Every run logs TensorBoard scalars; --mlflow logs params, metrics and the model to a local store."""

from __future__ import annotations

import tlearn


def test_tensorboard_event_files(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True)
    events = EventAccumulator(str(run.path / "tb"))
    events.Reload()
    assert "val/accuracy" in events.Tags()["scalars"]
    assert events.Scalars("val/accuracy")[-1].value == run.metrics["val"]["accuracy"]


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
