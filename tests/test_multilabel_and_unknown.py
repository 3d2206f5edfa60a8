"""End to end on tiny drawn images: multi-label runs from a label file, and runs that answer "unknown"."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlearn
from helpers import TINY_BACKBONE, run_cli, tiny_backbone_weights
from tlearn.audits.review import apply_review
from tlearn.data.discovery import discover
from tlearn.engines.answers import KnnReferences
from tlearn.errors import DataError

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _picture(red: bool, blue: bool, seed: int) -> Image.Image:
    """Grey noise with a red square top left and/or a blue square bottom right."""
    pixels = np.random.default_rng(seed).integers(90, 166, (64, 64, 3)).astype(np.uint8)
    if red:
        pixels[8:28, 8:28] = RED
    if blue:
        pixels[36:56, 36:56] = BLUE
    return Image.fromarray(pixels)


def _multilabel_folder(root: Path, count: int = 60, first_seed: int = 0) -> Path:
    """`count` images with red, blue or both, listed in labels.csv (`red|blue` for both); the noise drawn from
    seeds `first_seed` on (other seeds: other contents, which no earlier test has embedded)."""
    root.mkdir(parents=True)
    rows = []
    for index in range(count):
        red, blue = [(True, False), (False, True), (True, True)][index % 3]
        _picture(red, blue, seed=first_seed + index).save(root / f"img_{index:03d}.png")
        rows.append((f"img_{index:03d}.png", "|".join(name for name, on in (("red", red), ("blue", blue)) if on)))
    with (root / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return root / "labels.csv"


def test_multilabel_linear_run_answers_label_sets(tmp_path, capsys):
    labels = _multilabel_folder(tmp_path / "data", first_seed=7000)
    run = tlearn.train(labels, out=tmp_path / "run", quiet=True, mode="linear")
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["task"] == "multilabel" and len(config["thresholds"]) == 2 and config["classes"] == ["blue", "red"]
    for split in ("val", "cv"):
        assert run.metrics[split]["task"] == "multilabel"
        assert run.metrics[split]["mAP"] >= 0.95 and run.metrics[split]["subset_accuracy"] >= 0.9
        assert run.metrics[split]["label_cardinality"] == pytest.approx(4 / 3, abs=0.2)
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())  # the run audits its label sets too
    assert audit["task"] == "multilabel" and audit["summary"]["cv_accuracy"] >= 0.9
    assert sum(audit["counts"].values()) == sum(len(row["label"].split("|")) for row in csv.DictReader(labels.open()))
    code, _, err = run_cli(capsys, "audit", labels, "--out", tmp_path / "audit")  # the run's squashed embeddings
    assert code == 0 and "60 cached, 0 computed" in err
    with (tmp_path / "run" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    both = [row for row in rows if set(row["label"].split("|")) == {"red", "blue"}]
    assert both and sum(set(row["predicted"].split("|")) == {"red", "blue"} for row in both) >= 0.9 * len(both)
    kinds = [(True, True, {"red", "blue"}), (False, True, {"blue"}), (True, False, {"red"})] * 3
    for index, (red, blue, _) in enumerate(kinds):
        _picture(red, blue, seed=900 + index).save(tmp_path / f"new_{index}.png")
    answers = tlearn.load(tmp_path / "run").predict([tmp_path / f"new_{index}.png" for index in range(len(kinds))])
    right = [set(answer.label_set) == wanted for answer, (_, _, wanted) in zip(answers, kinds, strict=True)]
    assert sum(right) >= len(kinds) - 1 and all(answer.label == answer.label_set[0] for answer in answers)


def _wide_multilabel_folder(root: Path, count: int = 60) -> Path:
    """2:1 pictures with a red square at the left edge and/or a blue one at the right edge (labels.csv): a
    centre crop of the backbone's square input cuts both off."""
    root.mkdir(parents=True)
    rows = []
    for index in range(count):
        red, blue = [(True, False), (False, True), (True, True)][index % 3]
        pixels = np.random.default_rng(index).integers(90, 166, (64, 128, 3)).astype(np.uint8)
        if red:
            pixels[22:42, 2:22] = RED
        if blue:
            pixels[22:42, 106:126] = BLUE
        Image.fromarray(pixels).save(root / f"wide_{index:03d}.png")
        rows.append((f"wide_{index:03d}.png", "|".join(name for name, on in (("red", red), ("blue", blue)) if on)))
    with (root / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return root / "labels.csv"


def test_multilabel_pictures_are_squashed_whole_not_centre_cropped(tmp_path):
    """The labels of a multi-label picture may sit at its edges: `--crop auto` squashes the whole picture onto
    the square input (stored in the model, so predictions see it the same way); a centre crop loses them."""
    labels = _wide_multilabel_folder(tmp_path / "data")
    whole = tlearn.train(labels, out=tmp_path / "auto", quiet=True, mode="linear")
    cropped = tlearn.train(labels, out=tmp_path / "center", quiet=True, mode="linear", crop="center")
    stored = [json.loads((tmp_path / run / "model" / "config.json").read_text()) for run in ("auto", "center")]
    assert [config["preprocessing"]["crop_mode"] for config in stored] == ["squash", "center"]
    assert whole.metrics["cv"]["mAP"] >= 0.95
    assert cropped.metrics["cv"]["mAP"] <= 0.85  # the markers are outside the centre crop: near chance
    answers = tlearn.load(tmp_path / "auto").predict(sorted((tmp_path / "data").glob("wide_00[0-5].png")))
    assert [set(answer.label_set) for answer in answers] == [{"red"}, {"blue"}, {"red", "blue"}] * 2


def test_multilabel_finetune_trains_sigmoid_heads(tmp_path):
    labels = _multilabel_folder(tmp_path / "data", count=30)
    weights = tiny_backbone_weights(tmp_path)
    run = tlearn.train(
        labels,
        out=tmp_path / "run",
        quiet=True,
        mode="finetune",
        epochs=6,
        batch_size=8,
        backbone=TINY_BACKBONE,
        weights=weights,
    )
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["mode"] == "finetune" and config["task"] == "multilabel" and len(config["thresholds"]) == 2
    assert run.summary.selection.kept == "finetune"
    with (tmp_path / "run" / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert float(row["p_red"]) + float(row["p_blue"]) != pytest.approx(1.0, abs=1e-3)  # sigmoids, not a softmax
    assert run.summary.finetune.epochs == 6 and "mAP" in run.metrics["val"]


def test_reject_is_refused_for_multilabel_data(tmp_path):
    labels = _multilabel_folder(tmp_path / "data", count=30)
    with pytest.raises(DataError, match="--reject is for single-label models"):
        tlearn.train(labels, out=tmp_path / "run", quiet=True, mode="linear", reject="knn")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("score", ["knn", "confidence"])
def test_reject_rule_is_chosen_on_val_stored_and_applied(tiny_data, tmp_path, score):
    run = tlearn.train(
        tiny_data,
        out=tmp_path / "run",
        quiet=True,
        mode="linear",
        reject=score,
        target_coverage=0.9,
        split=(0.6, 0.4, 0),
    )
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["reject"]["score"] == score and config["reject"]["target"] == {"coverage": 0.9}
    assert (tmp_path / "run" / "model" / "reject.safetensors").is_file() == (score == "knn")
    reject = run.metrics["val"]["reject"]
    assert reject["score"] == score and reject["threshold"] == config["reject"]["threshold"]
    assert reject["coverage"] == pytest.approx(0.9, abs=0.1) and reject["curve"]["coverage"][-1] == 1.0
    model = tlearn.load(tmp_path / "run")
    known = model.predict(sorted((tiny_data / "red").glob("*.png"))[:4])
    assert all(answer.reject_score is not None for answer in known)
    assert sum(answer.label == "red" for answer in known) >= 3
    if score == "knn":  # a picture unlike any training image is answered "unknown", with its best guess
        Image.fromarray(np.tile(np.array([[0, 255]], dtype=np.uint8), (48, 24))).convert("RGB").save(
            tmp_path / "odd.png"
        )
        (odd,) = model.predict([tmp_path / "odd.png"])
        assert odd.unknown and odd.label == "unknown" and odd.labels[0] in ("red", "blue")
        assert odd.reject_score < config["reject"]["threshold"] < min(answer.reject_score for answer in known)


def test_a_multilabel_folder_is_audited_and_its_review_puts_the_label_sets_right(tmp_path):
    labels = _multilabel_folder(tmp_path / "data", count=60)
    rows = list(csv.reader(labels.open()))
    # Planted errors, one of each kind: a label missing, a label too many, a label swapped.
    planted = {"img_002.png": ("red", "blue|red"), "img_003.png": ("red|blue", "red"), "img_004.png": ("red", "blue")}
    for row in rows[1:]:
        if row[0] in planted:
            row[1] = planted[row[0]][0]
    with labels.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    audit = tlearn.audit(labels, out=tmp_path / "audit", quiet=True)
    assert audit.payload["task"] == "multilabel" and audit.summary["cv_accuracy"] >= 0.9
    issues = {issue["path"]: issue for issue in audit.payload["label_issues"]}
    assert set(planted) <= set(issues) and len(issues) <= len(planted) + 2
    for path, (given, truth) in planted.items():
        assert set(issues[path]["given"].split("|")) == set(given.split("|"))
        assert set(issues[path]["suggested"].split("|")) == set(truth.split("|"))
        assert issues[path]["p_suggested"] > issues[path]["p_given"]
    assert "(multi-label)" in audit.lines()[0] and "every label right" in audit.lines()[0]
    review = {row["path"]: row for row in csv.DictReader(audit.review_csv.open())}
    assert all(review[path]["action"] in ("relabel", "drop") for path in planted)
    for row in review.values():
        row["action"] = "relabel" if row["path"] in planted else "keep"
    with audit.review_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(next(iter(review.values()))))
        writer.writeheader()
        writer.writerows(review.values())
    reviewed, summary = apply_review(discover(labels), audit.review_csv)
    assert summary["relabelled"] == len(planted) and not summary["errors"]
    now = {image.relpath: set(image.labels) for image in reviewed.images}
    assert all(now[path] == set(truth.split("|")) for path, (_, truth) in planted.items())
    with pytest.raises(DataError, match="several labels: backbone selection ranks backbones on single-label data"):
        tlearn.select(labels, backbones=["lite0"], quiet=True)


def test_evaluate_measures_label_sets_and_reject_rules(tiny_data, tmp_path):
    labels = _multilabel_folder(tmp_path / "multilabel-data", count=45)
    tlearn.train(labels, out=tmp_path / "multilabel", quiet=True, mode="linear")
    evaluation = tlearn.evaluate(tmp_path / "multilabel", labels, out=tmp_path / "eval-multilabel", quiet=True)
    figures = evaluation.metrics[evaluation.split]
    assert figures["task"] == "multilabel" and figures["mAP"] >= 0.95 and figures["n"] == 45
    tlearn.train(tiny_data, out=tmp_path / "reject", quiet=True, mode="linear", reject="knn", target_coverage=0.9)
    evaluation = tlearn.evaluate(tmp_path / "reject", tiny_data, out=tmp_path / "eval-reject", quiet=True)
    reject = evaluation.metrics[evaluation.split]["reject"]
    assert reject["score"] == "knn" and 0.5 <= reject["coverage"] <= 1.0 and reject["answered"] >= 16


def test_finetuned_model_rejects_with_its_own_embeddings(tiny_data, tmp_path):
    weights = tiny_backbone_weights(tmp_path)
    run = tlearn.train(
        tiny_data,
        out=tmp_path / "run",
        quiet=True,
        mode="finetune",
        epochs=2,
        backbone=TINY_BACKBONE,
        weights=weights,
        reject="knn",
        split=(0.6, 0.4, 0),
    )
    model = tlearn.load(tmp_path / "run").backend
    assert model.config.mode == "finetune" and model.config.reject.score == "knn"
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    seen = [tiny_data / relpath for relpath in splits["train"] + splits["val"]]
    embeddings, failures = model.embed_files(seen)  # the shipped network's own classifier inputs
    expected = KnnReferences.from_embeddings(embeddings)
    assert not failures and model.references.vectors.shape == expected.vectors.shape
    assert np.abs(model.references.vectors - expected.vectors).max() < 2e-2  # stored in float16
    assert run.metrics["val"]["reject"]["coverage"] > 0


def test_cli_prints_multilabel_and_reject_figures(tiny_data, tmp_path, capsys):
    labels = _multilabel_folder(tmp_path / "multilabel-data", count=30)
    code, out, _ = run_cli(capsys, "train", labels, "--out", tmp_path / "multilabel", "--mode", "linear", "-q")
    assert code == 0 and re.search(r"val: mAP \d\.\d{3}  subset accuracy \d+\.\d% \(95% CI [\d.]+–[\d.]+%\)", out)
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "multilabel", labels, "-q")
    assert code == 0 and re.search(r"all: mAP \d\.\d{3}", out)
    args = ("--mode", "linear", "--reject", "confidence", "--target-coverage", "0.5", "-q")
    code, out, _ = run_cli(capsys, "train", tiny_data, "--out", tmp_path / "reject", *args)
    assert code == 0 and re.search(r"val: accuracy .*; answered \d+% \(confidence score >= [\d.]+\)", out)
