"""The run report: sections in a real browser, figures, numbers that match the run, calibration, TTA."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlearn
from helpers import colour_image
from tlearn.data.preprocess import EvalPreprocess
from tlearn.engines.imagenet import imagenet_class_names
from tlearn.evaluation.calibration import apply_temperature
from tlearn.report.page import least_confident_right, worst_errors
from tlearn.runs.layout import sample_rows
from tlearn.util.numeric import cross_entropy

SECTIONS = ("overview", "training", "metrics", "confusion", "errors", "calibration", "before-after", "dataset")
FIGURES = {"training_curves", "confusion_counts", "confusion_normalised", "reliability"}


def make_confusable_folder(root: Path, per_class: int = 14) -> Path:
    """Three classes, two of which look alike (red squares): errors for the galleries and for calibration."""
    styles = {"blue": ((30, 30, 220), "circle"), "red_a": ((220, 30, 30), "square"), "red_b": ((220, 30, 30), "square")}
    for offset, (name, (colour, shape)) in enumerate(styles.items()):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            colour_image(colour, seed=100 * offset + n, shape=shape).save(root / name / f"img_{n:03d}.png")
    return root


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_confusable_folder(root / "data")
    # train+val: the shipped model is the one measured on test, so predictions.csv and the model agree exactly.
    # Fine-tuned for 8 epochs: auto mode on a folder this small tries 35 twice (two minutes of CI).
    return tlearn.train(
        data,
        out=root / "run",
        quiet=True,
        calibrate=True,
        split=(0.6, 0.2, 0.2),
        final_fit="train+val",
        mode="finetune",
        epochs=8,
    )


def prediction_rows(run_dir: Path, split: str) -> list[dict[str, str]]:
    with open(run_dir / "predictions.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == split]


def test_calibration_is_stored_in_the_model_and_used_everywhere(calibrated_run, tmp_path):
    assert calibrated_run.metrics["val"]["accuracy"] < 1.0  # the look-alike classes leave errors to fit on
    temperature = tlearn.load(calibrated_run.model_path, device="cpu").config.temperature
    assert temperature != 1.0
    classes = calibrated_run.metrics["val"]["classes"]
    val_rows = prediction_rows(calibrated_run.path, "val")
    labels = np.array([classes.index(row["label"]) for row in val_rows])
    saved = np.array([[float(row[f"p_{name}"]) for name in classes] for row in val_rows])
    # The fitted temperature minimises the validation loss, so undoing it cannot do better.
    assert cross_entropy(saved, labels) <= cross_entropy(apply_temperature(saved, 1 / temperature), labels) + 1e-6
    # The saved model gives the probabilities the run reported (the temperature travels with the model).
    test_rows = prediction_rows(calibrated_run.path, "test")
    data = calibrated_run.config.data
    answers = tlearn.load(calibrated_run.model_path, device="cpu").predict(
        [data / row["path"] for row in test_rows], top_k=1, workers=0
    )
    for answer, row in zip(answers, test_rows, strict=True):
        assert answer.probabilities[0] == pytest.approx(float(row[f"p_{answer.label}"]), abs=1e-4)


def test_report_renders_in_headless_chromium(calibrated_run, browser, tmp_path):
    report = calibrated_run.path / "report.html"
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html and 'src="http' not in html and "<link" not in html  # self-contained, offline
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(report.resolve().as_uri())
    for section in SECTIONS:
        assert page.locator(f"section#{section}").is_visible(), section
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    errors = sum(row["label"] != row["predicted"] for row in prediction_rows(calibrated_run.path, "test"))
    assert page.locator("#errors .gallery").first.locator(".tile").count() == min(errors, 12)
    before_after = page.locator("table.before-after tr")
    assert before_after.count() - 1 == min(8, calibrated_run.metrics["test"]["n"])  # header + one row per sample
    imagenet_text = page.locator("table.before-after").inner_text()
    assert sum(name in imagenet_text for name in imagenet_class_names()) >= 3
    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    with Image.open(screenshot) as shot:
        assert shot.width == 1280 and shot.height > 2500
        assert np.asarray(shot.convert("L")).std() > 20  # a page with content, not a blank one


def test_figures_are_png_files_of_sensible_size(calibrated_run):
    written = {path.stem: path for path in (calibrated_run.path / "figures").glob("*.png")}
    assert len(calibrated_run.history_rows) > 1  # it fine-tuned: the epochs' hardware use is drawn too
    assert set(written) == FIGURES | {"hardware"}
    html = (calibrated_run.path / "report.html").read_text(encoding="utf-8")
    assert 'alt="hardware use per epoch"' in html and "<code>cpu_percent</code>" in html
    for path in written.values():
        with Image.open(path) as figure:
            assert figure.format == "PNG" and 300 <= figure.width <= 3000 and 300 <= figure.height <= 3000
            figure.verify()


def test_report_numbers_match_the_run(calibrated_run):
    html = (calibrated_run.path / "report.html").read_text(encoding="utf-8")
    test = calibrated_run.metrics["test"]
    train_counts = calibrated_run.data_report["counts"]["train"]
    majority = max(train_counts, key=train_counts.get)
    share = test["per_class"][majority]["support"] / test["n"]
    assert f"always answering “{majority}”" in html and f"majority baseline {100 * share:.1f}%" in html
    assert f"{100 * test['accuracy']:.1f}%" in html and f"{test['macro_f1']:.3f}" in html
    temperature = tlearn.load(calibrated_run.model_path, device="cpu").config.temperature
    assert f"{temperature:.3f}" in html and f"{test['ece']:.3f}" in html


def test_report_of_a_cached_linear_run_never_imports_torch(calibrated_run):
    script = (
        f"import sys; from tlearn.report.page import write_report; write_report({str(calibrated_run.path)!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_evaluate_with_tta_writes_a_report_and_averages_the_mirror_image(calibrated_run, tmp_path):
    out = tmp_path / "eval"
    evaluation = tlearn.evaluate(
        calibrated_run.model_path, calibrated_run.config.data, out=out, split="test", tta=True, quiet=True
    )
    assert json.loads((out / "evaluation.json").read_text())["tta"] is True
    assert evaluation.metrics["test"]["n"] == calibrated_run.metrics["test"]["n"] and (out / "report.html").is_file()
    assert {path.stem for path in (out / "figures").glob("*.png")} == FIGURES - {"training_curves"}
    classifier = tlearn.load(calibrated_run.model_path, device="cpu")
    prep = EvalPreprocess(classifier.preprocessing)
    pixels = np.stack([prep.from_file(calibrated_run.config.data / "red_a" / f"img_00{n}.png") for n in range(3)])
    mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
    expected = (classifier.probabilities(pixels) + classifier.probabilities(mirrored)) / 2
    assert np.allclose(classifier.probabilities(pixels, flip=True), expected, atol=1e-5)


def test_galleries_and_samples_pick_the_right_rows():
    rows = [
        {"path": f"{label}/{n}.png", "label": label, "predicted": predicted, "confidence": str(confidence)}
        for n, (label, predicted, confidence) in enumerate(
            [
                ("a", "b", 0.9),
                ("a", "b", 0.6),
                ("b", "a", 0.99),
                ("a", "a", 0.51),
                ("b", "b", 0.7),
                ("b", "b", 0.95),
                ("c", "c", 0.8),
            ]
        )
    ]
    assert [row["confidence"] for row in worst_errors(rows, 2)] == ["0.99", "0.9"]
    assert [row["confidence"] for row in least_confident_right(rows, 3)] == ["0.51", "0.7", "0.8"]
    assert [row["label"] for row in sample_rows(rows, 5)] == ["a", "b", "c", "a", "b"]


def test_report_says_which_model_was_kept_why_and_how_precise_the_figures_are(exported_model):
    page = (exported_model.run / "report.html").read_text(encoding="utf-8")
    choice = page[page.index('id="choice"') : page.index('id="training"')]
    assert "Which model, and why" in choice and "fine-tuning did not run" in choice
    assert "no error in cross-validation" in choice and "fitted again on every image, test split included" in choice
    assert "the test figures describe the model before that last fit" in choice
    overview = page[page.index('id="overview"') : page.index('id="choice"')]
    assert overview.count("95% interval") == 2  # accuracy and macro F1
    assert "cannot be told apart" in overview and "too few images" in overview  # a 6-image test split
