"""End to end on tiny generated images: outputs and their contract, cache reuse, broken files, run dirs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

import tlearn
from helpers import make_class_folder, write_broken_files
from tlearn.errors import DataError, RunDirError
from tlearn.util.atomic import leftover_temporaries

METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "classes", "n"}


def test_linear_run_writes_the_contract(tiny_data, tmp_path):
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, split=(0.6, 0.2, 0.2))
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    for values in metrics.values():
        assert set(values) >= METRIC_KEYS and values["classes"] == ["blue", "red"]
        assert values["accuracy"] >= 0.9  # red squares vs blue circles
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["classes"] == ["blue", "red"] and config["arch"] == "tf_efficientnet_lite0"
    assert config["preprocessing"]["input_size"] == [224, 224] and config["tlearn_version"] == tlearn.__version__
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(
        p.relative_to(tiny_data).as_posix() for p in tiny_data.rglob("*.png")
    )
    with open(out / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["stage"] == "linear head" and list(rows[0]) == [
        "epoch",
        "stage",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
        "images_per_second",
    ]
    assert yaml.safe_load((out / "config.yaml").read_text())["mode"] == "linear"
    assert not leftover_temporaries(out)
    assert run.metrics == metrics


def test_saved_model_reproduces_the_run_metrics(tiny_data, tmp_path):
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, split=(0.6, 0.2, 0.2))
    classifier = tlearn.load(run.path)
    splits = json.loads((run.path / "splits.json").read_text())
    predictions = classifier.predict([tiny_data / relpath for relpath in splits["test"]], top_k=2)
    accuracy = np.mean(
        [p.label == relpath.split("/")[0] for p, relpath in zip(predictions, splits["test"], strict=True)]
    )
    assert accuracy == pytest.approx(run.metrics["test"]["accuracy"])
    with open(run.path / "predictions.csv") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle) if row["split"] == "test"}
    for prediction, relpath in zip(predictions, splits["test"], strict=True):
        assert float(rows[relpath][f"p_{prediction.labels[0]}"]) == pytest.approx(prediction.probabilities[0], abs=1e-4)


def test_second_run_and_grown_folder_use_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_class_folder(tmp_path / "data", {"red": 12, "blue": 12})
    first = tlearn.train(data, out=tmp_path / "one", quiet=True)
    assert first.summary["embedding"] == {**first.summary["embedding"], "cache_hits": 0, "computed": 24}
    second = tlearn.train(data, out=tmp_path / "two", quiet=True)
    assert second.summary["embedding"]["cache_hits"] == 24 and second.summary["embedding"]["computed"] == 0
    assert second.metrics == first.metrics
    make_class_folder(data, {"red": 3, "blue": 2}, start=100)
    grown = tlearn.train(data, out=tmp_path / "three", quiet=True)
    assert grown.summary["embedding"]["cache_hits"] == 24 and grown.summary["embedding"]["computed"] == 5


def test_corrupted_cache_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_class_folder(tmp_path / "data", {"red": 8, "blue": 8})
    tlearn.train(data, out=tmp_path / "one", quiet=True)
    entry = next((tmp_path / "cache" / "embeddings").rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:40])
    again = tlearn.train(data, out=tmp_path / "two", quiet=True)
    assert again.summary["embedding"]["computed"] == 1 and again.summary["embedding"]["corrupt_cache_entries"] == 1


def test_broken_files_are_reported_skipped_and_untouched(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 10, "blue": 10})
    expected = write_broken_files(data / "red")
    before = {name: (data / "red" / name).read_bytes() for name in expected}
    run = tlearn.train(data, out=tmp_path / "run", quiet=True)
    report = json.loads((run.path / "data_report.json").read_text())
    reasons = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert set(reasons) == {f"red/{name}" for name in expected}
    for name, word in expected.items():
        assert word in reasons[f"red/{name}"]
    assert {name: (data / "red" / name).read_bytes() for name in expected} == before
    used = [path for paths in json.loads((run.path / "splits.json").read_text()).values() for path in paths]
    assert not any(path in used for path in reasons)
    # A second run reports the same files from the cache of verdicts.
    again = tlearn.train(data, out=tmp_path / "again", quiet=True)
    assert {entry["path"] for entry in again.data_report["skipped"]} == set(reasons)


def test_class_left_empty_by_broken_files_is_a_data_error(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 10})
    write_broken_files(data / "only_broken")
    with pytest.raises(DataError, match="only_broken"):
        tlearn.train(data, out=tmp_path / "run", quiet=True)


def test_run_directory_is_never_shared_by_accident(tiny_data, tmp_path):
    out = tmp_path / "run"
    tlearn.train(tiny_data, out=out, quiet=True)
    (out / "my_notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="--overwrite"):
        tlearn.train(tiny_data, out=out, quiet=True)
    tlearn.train(tiny_data, out=out, quiet=True, overwrite=True)
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "model" / "model.safetensors").exists()


def test_config_file_round_trip(tiny_data, tmp_path):
    first = tlearn.train(tiny_data, out=tmp_path / "one", quiet=True, seed=3, split=(0.7, 0.3, 0.0))
    repeat = tlearn.train(config=first.path / "config.yaml", out=tmp_path / "two", quiet=True)
    assert repeat.config == first.config and repeat.metrics == first.metrics
    assert set(repeat.metrics) == {"val"}


def test_imbalanced_data_uses_a_balanced_loss(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 40, "blue": 6})
    run = tlearn.train(data, out=tmp_path / "run", quiet=True, split=(0.5, 0.5, 0.0))
    assert run.data_report["imbalance"]["imbalanced"] and run.summary["head"]["balanced_loss"]
    off = tlearn.train(data, out=tmp_path / "off", quiet=True, split=(0.5, 0.5, 0.0), balance="off")
    assert not off.summary["head"]["balanced_loss"]


def test_finetune_runs_and_keeps_the_best_state(tiny_data, tmp_path):
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, mode="finetune", epochs=2, batch_size=8, workers=0)
    stages = [row["stage"] for row in run.history_rows]
    assert stages[0] == "linear head" and len(stages) == 3 and stages[1].startswith("unfreeze")
    assert all(row["val_loss"] is not None for row in run.history_rows)
    best = max(run.history_rows, key=lambda row: (row["val_accuracy"], -row["val_loss"]))
    assert run.metrics["val"]["accuracy"] == pytest.approx(best["val_accuracy"])
    classifier = tlearn.load(run.model_path)
    assert classifier.config.mode == "finetune" and classifier.classes == ["blue", "red"]
