"""`PredictOptions`: every option a caller sets is the one the engine applies, to files and pictures alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlearn.engines.base import InferenceEngine
from tlearn.engines.options import PredictOptions
from tlearn.runs.model_dir import ModelConfig, RejectRule
from tlearn.util.numeric import softmax

SIZE = 8  # the fake model's input: (8, 8) pixels, no crop
PREPROCESSING = {
    "input_size": [SIZE, SIZE],
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "crop_pct": 1.0,
}


class HalvesEngine(InferenceEngine):
    """Class "left" when the left half of an image is brighter, "right" otherwise; a mirror image swaps the two
    probabilities, so a flipped prediction is exactly (0.5, 0.5). Records the size of every batch it runs."""

    engine = "halves"

    def __init__(self, reject: RejectRule | None = None) -> None:
        config = ModelConfig(
            arch="halves",
            backbone={"name": "halves", "arch": "halves"},
            classes=["left", "right"],
            preprocessing=PREPROCESSING,
            embedding_dim=2,
            classifier_keys=("head.weight", "head.bias"),
            mode="linear",
            reject=reject,
        )
        super().__init__(config, path=None)
        self.batch_sizes: list[int] = []

    def _forward(self, pixels: np.ndarray, *, embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        self.batch_sizes.append(len(pixels))
        halves = pixels.astype(np.float32)  # (B, H, W, 3)
        logits = np.stack(
            [halves[:, :, : SIZE // 2].mean(axis=(1, 2, 3)), halves[:, :, SIZE // 2 :].mean(axis=(1, 2, 3))]
        )
        return softmax(logits.T / 64), None  # (B, 2)


def left_bright(shade: int) -> Image.Image:
    """An (8, 8) picture whose left half is brighter than its right by `shade`."""
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:, : SIZE // 2] = shade
    return Image.fromarray(pixels)


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    files = []
    for index, shade in enumerate((60, 120, 180, 240, 30)):
        files.append(tmp_path / f"{index}.png")
        left_bright(shade).save(files[-1])
    return files


@pytest.mark.parametrize(
    ("values", "message"),
    [({"top_k": 0}, "top_k"), ({"batch_size": 0}, "batch_size"), ({"workers": -1}, "workers")],
)
def test_options_refuse_values_no_prediction_can_use(values, message):
    with pytest.raises(ValueError, match=message):
        PredictOptions(**values)


def test_top_k_batch_size_and_flip_reach_pictures_and_files(image_files):
    pictures = [left_bright(shade) for shade in (50, 100, 150)]
    engine = HalvesEngine()
    answers = engine.predict([*pictures, *image_files], PredictOptions(top_k=1, batch_size=2, workers=0))
    assert [len(answer.labels) for answer in answers] == [1] * 8 and {a.label for a in answers} == {"left"}
    assert max(engine.batch_sizes) == 2 and sum(engine.batch_sizes) == 8  # 5 files and 3 pictures, 2 at a time
    assert all(answer.probabilities[0] > 0.6 for answer in answers)

    flipped = HalvesEngine()
    answers = flipped.predict([*pictures, *image_files], PredictOptions(top_k=2, batch_size=3, workers=0, flip=True))
    assert [len(answer.labels) for answer in answers] == [2] * 8
    np.testing.assert_allclose([answer.probabilities for answer in answers], 0.5, atol=1e-6)  # image + mirror
    assert max(flipped.batch_sizes) == 3 and sum(flipped.batch_sizes) == 2 * 8  # every batch twice


def test_streamed_and_scored_files_use_the_batch_size_and_flip(image_files):
    engine = HalvesEngine()
    streamed = list(engine.iter_file_predictions(image_files, PredictOptions(top_k=1, batch_size=4, workers=0)))
    assert [answer.source for answer in streamed] == [str(path) for path in image_files]
    assert engine.batch_sizes == [4, 1]

    engine.batch_sizes.clear()
    options = PredictOptions(batch_size=2, workers=0, flip=True)
    probabilities, failures = engine.predict_files_probabilities([*image_files, Path("missing.png")], options)
    assert failures.keys() == {5} and engine.batch_sizes == [2, 2, 2, 2, 1, 1]
    np.testing.assert_allclose(probabilities[:5], 0.5, atol=1e-6)
    assert not probabilities[5].any()  # a zero row for the file that could not be read


def test_reject_false_answers_the_best_class_with_the_score_kept(image_files):
    engine = HalvesEngine(reject=RejectRule(score="confidence", threshold=0.999))
    rejected = engine.predict(image_files, PredictOptions(workers=0))
    answered = engine.predict(image_files, PredictOptions(workers=0, reject=False))
    assert [answer.label for answer in rejected] == ["unknown"] * 5
    assert [answer.label for answer in answered] == ["left"] * 5
    assert [a.reject_score for a in answered] == pytest.approx([a.reject_score for a in rejected])
    row = np.array([0.3, 0.7])
    assert engine.answer("x.png", row, PredictOptions(top_k=1), 0.5).label == "unknown"
    assert engine.answer("x.png", row, PredictOptions(top_k=1, reject=False), 0.5).labels == ["right"]
