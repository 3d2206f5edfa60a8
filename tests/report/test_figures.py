"""The report's figures: valid PNGs whose size follows the content (2 to 100 classes)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tlearn.evaluation.calibration import reliability_bins
from tlearn.report.figures import confusion_matrix_figure, reliability_diagram, training_curves


def png_size(payload: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(payload)) as picture:
        assert picture.format == "PNG"
        return picture.size


def test_confusion_matrix_grows_with_the_classes_within_bounds():
    small = png_size(confusion_matrix_figure(np.array([[9, 1], [2, 8]]), ["ants", "bees"], normalise=False))
    matrix = np.diag(np.full(100, 5)) + 1
    large = png_size(confusion_matrix_figure(matrix, [f"class {index}" for index in range(100)], normalise=True))
    assert 400 <= small[0] <= 900 and 400 <= small[1] <= 900
    assert large[0] > 2 * small[0] and large[0] <= 2500 and large[1] <= 2500


def test_training_curves_and_reliability_diagram():
    history = [
        {
            "epoch": epoch,
            "stage": "linear head" if epoch == 0 else f"unfreeze {epoch + 1}/4",
            "train_loss": None if epoch == 0 else 1 / (epoch + 1),
            "train_accuracy": 0.8 + epoch / 50,
            "val_loss": 0.5 - epoch / 50,
            "val_accuracy": 0.8 + epoch / 60,
        }
        for epoch in range(5)
    ]
    assert png_size(training_curves(history, best_epoch=3))[0] >= 800
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    bins = reliability_bins(probabilities, np.array([0, 1, 1]))
    assert png_size(reliability_diagram(bins, uncalibrated=bins, temperature=1.5))[1] >= 500
