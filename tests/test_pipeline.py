"""End to end on tiny generated images: outputs and their contract, cache reuse, broken files, run dirs."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing

import numpy as np
import pytest
import yaml

import tlearn
from helpers import make_class_folder, write_broken_files
from tlearn.errors import DataError, RunDirError
from tlearn.evaluation.intervals import wilson_interval
from tlearn.util.atomic import leftover_temporaries

METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "classes", "n"}


def test_linear_run_writes_the_contract(tiny_data, tmp_path):
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, split=(0.6, 0.2, 0.2))
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "test", "cv"}  # cv: the linear head's cross-validation over train + val
    assert metrics["cv"]["n"] == metrics["val"]["n"] + len(json.loads((out / "splits.json").read_text())["train"])
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
        "cpu_percent",
        "rss_mb",
        "gpu_percent",
        "gpu_memory_mb",
    ]
    assert yaml.safe_load((out / "config.yaml").read_text())["mode"] == "auto"
    # Red squares against blue circles: the linear head makes no error out of fold, so auto keeps it.
    assert run.summary.model == "linear" and "no error in cross-validation" in run.summary.finetune_skipped
    assert not leftover_temporaries(out)
    assert run.metrics == metrics


def test_a_fine_tuned_network_is_fitted_again_on_every_image_and_the_run_records_the_refit(tiny_data, tmp_path):
    from helpers import TINY_BACKBONE, tiny_backbone_weights

    weights = tiny_backbone_weights(tmp_path)
    options = {"backbone": TINY_BACKBONE, "weights": weights, "batch_size": 8, "workers": 0, "epochs": 2}
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, mode="finetune", split=(0.6, 0.2, 0.2), **options)
    tuned = run.summary.finetune
    assert run.summary.final_fit == "all" and set(tuned.refits) == {"refit-all"}
    assert tuned.refits["refit-all"].epochs == tuned.epochs == 2  # the validated run's schedule, once more
    stages = [row["stage"] for row in run.history_rows[-tuned.epochs :]]
    assert all(stage.startswith("refit-all on train+val+test: ") for stage in stages)
    saved = json.loads((run.path / "run.json").read_text())
    assert saved["finetune"]["refits"]["refit-all"]["epochs"] == 2


def test_saved_model_reproduces_the_run_metrics(tiny_data, tmp_path):
    # train+val: the model measured on test is the one shipped (`all` fits it once more, test split included)
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, split=(0.6, 0.2, 0.2), final_fit="train+val")
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
    assert (first.summary.embedding.cache_hits, first.summary.embedding.computed) == (0, 24)
    second = tlearn.train(data, out=tmp_path / "two", quiet=True)
    assert (second.summary.embedding.cache_hits, second.summary.embedding.computed) == (24, 0)
    assert second.metrics == first.metrics
    make_class_folder(data, {"red": 3, "blue": 2}, start=100)
    grown = tlearn.train(data, out=tmp_path / "three", quiet=True)
    assert (grown.summary.embedding.cache_hits, grown.summary.embedding.computed) == (24, 5)


def test_a_warm_run_reads_its_results_back_without_importing_scikit_learn_or_matplotlib(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 12, "blue": 12})
    code = (
        "import json, sys, tlearn\n"
        "run = tlearn.train(sys.argv[1], out=sys.argv[2], quiet=True)\n"
        "print(json.dumps({name: name in sys.modules for name in ('sklearn', 'matplotlib', 'scipy.stats')}))\n"
    )
    environment = {**os.environ, "TLEARN_CACHE_DIR": str(tmp_path / "cache")}

    def train(out: str) -> dict[str, bool]:
        done = subprocess.run(
            [sys.executable, "-c", code, str(data), str(tmp_path / out)],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert train("cold") == {"sklearn": True, "matplotlib": True, "scipy.stats": True}
    assert train("warm") == {"sklearn": False, "matplotlib": False, "scipy.stats": False}
    cold, warm = tmp_path / "cold", tmp_path / "warm"
    for name in ("metrics.json", "audit.json", "predictions.csv", "model/model.safetensors"):
        assert (warm / name).read_bytes() == (cold / name).read_bytes(), name
    figures = sorted(path.name for path in (cold / "figures").iterdir())
    assert figures and figures == sorted(path.name for path in (warm / "figures").iterdir())
    for name in figures:
        assert (warm / "figures" / name).read_bytes() == (cold / "figures" / name).read_bytes(), name


def test_corrupted_cache_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_class_folder(tmp_path / "data", {"red": 8, "blue": 8})
    tlearn.train(data, out=tmp_path / "one", quiet=True)
    database = next((tmp_path / "cache" / "embeddings").glob("*.sqlite"))
    with closing(sqlite3.connect(database)) as connection, connection:  # zero one stored vector: its CRC fails
        connection.execute("UPDATE embeddings SET vector = zeroblob(length(vector)) WHERE rowid = 1")
    again = tlearn.train(data, out=tmp_path / "two", quiet=True)
    assert (again.summary.embedding.computed, again.summary.embedding.corrupt_cache_entries) == (1, 1)


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
    with pytest.raises(RunDirError, match="overwrite=True"):
        tlearn.train(tiny_data, out=out, quiet=True)
    tlearn.train(tiny_data, out=out, quiet=True, overwrite=True)
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "model" / "model.safetensors").exists()


def test_config_file_round_trip(tiny_data, tmp_path):
    first = tlearn.train(tiny_data, out=tmp_path / "one", quiet=True, seed=3, split=(0.7, 0.3, 0.0))
    repeat = tlearn.train(config=first.path / "config.yaml", out=tmp_path / "two", quiet=True)
    assert repeat.config == first.config and repeat.metrics == first.metrics
    assert set(repeat.metrics) == {"val", "cv"}


def test_imbalanced_data_uses_a_balanced_loss(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 40, "blue": 6})
    run = tlearn.train(data, out=tmp_path / "run", quiet=True, split=(0.5, 0.5, 0.0))
    assert run.data_report["imbalance"]["imbalanced"] and run.summary.head.balanced_loss
    off = tlearn.train(data, out=tmp_path / "off", quiet=True, split=(0.5, 0.5, 0.0), balance="off")
    assert not off.summary.head.balanced_loss


def test_finetune_keeps_the_best_validated_epoch_not_the_last(tiny_data, tmp_path, monkeypatch):
    # A learning rate far too high: the network wrecks itself after the first steps, so the epochs differ and
    # the last one is not the best. The kept model must be the best one on validation.
    from tlearn.training import setup

    crops, real_transform = [], setup.train_transform
    monkeypatch.setattr(
        setup,
        "train_transform",
        lambda *args, size, **options: crops.append(size) or real_transform(*args, size=size, **options),
    )
    run = tlearn.train(
        tiny_data,
        out=tmp_path / "run",
        quiet=True,
        mode="finetune",
        final_fit="train",
        epochs=3,
        patience=5,
        batch_size=8,
        workers=0,
        lr=0.5,
        warmup_epochs=0,
    )
    rows = run.history_rows
    assert rows[0]["stage"].startswith("linear head") and len(rows) == 4 and rows[1]["stage"].startswith("unfreeze")
    assert len({round(row["val_loss"], 4) for row in rows}) > 1  # the epochs really differ
    best = max(rows, key=lambda row: (row["val_accuracy"], -row["val_loss"]))
    assert best is not rows[-1] and run.summary.finetune.best_epoch == best["epoch"]
    assert run.metrics["val"]["loss"] == pytest.approx(best["val_loss"], abs=1e-4)
    # each epoch says how busy the machine was (a CPU run: no GPU figures)
    assert all(row["cpu_percent"] > 0 and row["rss_mb"] > 50 for row in rows[1:])
    assert all(row["gpu_percent"] is None for row in rows[1:])
    classifier = tlearn.load(run.model_path)
    assert classifier.config.mode == "finetune" and classifier.classes == ["blue", "red"]
    # trained on Lite0's 224-pixel crops; validated, tested and shipped at 240 (training.plan.EVAL_SCALE)
    assert set(crops) == {224} and classifier.config.preprocessing["input_size"] == [240, 240]


def _shapes(root):
    """Squares against circles of the same colours: close enough that a random tiny backbone's linear head
    is not perfect, so auto mode goes on to fine-tune."""
    from helpers import colour_image

    for name in ("square", "circle"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(24):
            seed = n + (0 if name == "square" else 500)
            colour = (120 + n % 5 * 20, 60, 200 - n % 7 * 15)
            colour_image(colour, size=48, seed=seed, shape=name).save(root / name / f"{n}.png")
    return root


def test_auto_mode_fine_tunes_when_the_linear_head_errs_and_records_its_choice(tmp_path):
    from helpers import TINY_BACKBONE, tiny_backbone_weights

    data = _shapes(tmp_path / "data")
    weights = tiny_backbone_weights(tmp_path)
    run = tlearn.train(
        data, out=tmp_path / "run", quiet=True, backbone=TINY_BACKBONE, weights=weights, epochs=2, batch_size=8
    )
    summary = run.summary
    assert run.config.mode == "auto" and summary.finetune_skipped is None
    assert summary.head.cv_accuracy < 1.0 and summary.finetune.epochs == 2
    selection = summary.selection
    assert selection.images == run.metrics["val"]["n"]
    # Auto mode ships what the comparison chose, and the comparison follows the validation figures it records.
    assert selection.kept == selection.chosen == summary.model == tlearn.load(run.path).config.mode
    finetune_won = summary.finetune.best_epoch > 0 and (
        selection.finetune_accuracy > selection.linear_accuracy
        or (
            selection.finetune_accuracy == selection.linear_accuracy
            and selection.finetune_loss < 0.9 * selection.linear_loss
        )
    )
    assert selection.chosen == ("finetune" if finetune_won else "linear")
    page = (run.path / "report.html").read_text(encoding="utf-8")
    choice = page[page.index('id="choice"') : page.index('id="training"')]
    for accuracy in (selection.linear_accuracy, selection.finetune_accuracy):  # each candidate with its interval
        low, high = wilson_interval(round(accuracy * selection.images), selection.images)
        assert f"{100 * low:.1f}%–{100 * high:.1f}%" in choice
    if selection.chosen == "linear":
        assert "cv" in run.metrics and summary.finetune.refits == {}  # judged on its cross-validation, no refit
    else:
        assert summary.final_fit == "train+val" and summary.finetune.refits["refit"].epochs == 2
    linear_only = tlearn.train(
        data, out=tmp_path / "linear", quiet=True, backbone=TINY_BACKBONE, weights=weights, mode="linear"
    )
    assert linear_only.summary.finetune_skipped == "--mode linear"


def test_final_fit_decides_which_images_the_shipped_head_learns_from(tmp_path):
    from tlearn.training.head import fit_head

    data = make_class_folder(tmp_path / "data", {"red": 30, "blue": 30})
    answers = {}
    for final_fit in ("train", "train+val", "all"):
        run = tlearn.train(
            data, out=tmp_path / final_fit, quiet=True, mode="linear", final_fit=final_fit, split=(0.6, 0.2, 0.2)
        )
        weights = tlearn.load(run.path).backend.model.get_classifier().weight.detach().numpy()
        answers[final_fit] = (run, weights)
    run = answers["all"][0]
    assert run.summary.final_fit == "all" and answers["train+val"][0].summary.final_fit == "train+val"
    # The test figures of "all" are measured before the test split joins the fit: the same as train+val's.
    assert run.metrics["test"] == answers["train+val"][0].metrics["test"]
    splits = json.loads((run.path / "splits.json").read_text())
    from tlearn.backbones.cache import cache_root
    from tlearn.backbones.features import FeatureExtractor
    from tlearn.backbones.registry import resolve_backbone
    from tlearn.util.progress import Progress

    extractor = FeatureExtractor(resolve_backbone("lite0"), cache_root(), device="cpu", workers=0)
    for final_fit, names in (("train", ["train"]), ("train+val", ["train", "val"]), ("all", ["train", "val", "test"])):
        relpaths = [relpath for name in names for relpath in splits[name]]
        x = extractor.embed_files([data / relpath for relpath in relpaths], progress=Progress(quiet=True)).embeddings
        y = np.array([relpath.startswith("red") for relpath in relpaths], dtype=np.int64)  # classes: blue, red
        expected = fit_head(x, y, 2, run.summary.head.c).weight
        np.testing.assert_allclose(answers[final_fit][1], expected, atol=1e-4)
