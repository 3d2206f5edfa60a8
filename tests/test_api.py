"""The public API: `__all__` is complete, documented and torch-free to import; the engines' evaluate/export
delegate to the library functions and agree with them; keywords reach the engine as one `PredictOptions`, and a
`Model` has every public member of its engine."""

from __future__ import annotations

import copy
import inspect
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tlearn
from helpers import PROJECT
from tlearn.engines.base import InferenceEngine
from tlearn.engines.options import DEFAULT_PREDICT_OPTIONS, PredictOptions
from tlearn.errors import DataError, ModelFileError
from tlearn.runs.model_dir import ModelConfig

API_REFERENCE = PROJECT / "docs" / "api.md"


def test_all_lists_every_export_and_each_has_an_example_and_a_reference_entry():
    reference = API_REFERENCE.read_text(encoding="utf-8")
    assert set(tlearn.__all__) == {"__version__", *tlearn._EXPORTS}
    for name in tlearn.__all__:
        assert re.search(rf"`tlearn\.{re.escape(name)}\b", reference), f"{name} is missing from {API_REFERENCE}"
        if name != "__version__":
            assert "Example:" in (inspect.getdoc(getattr(tlearn, name)) or ""), f"tlearn.{name} has no example"
    for method in (
        tlearn.Run.report,
        tlearn.InferenceEngine.predict,
        tlearn.Model.predict,
        tlearn.Model.evaluate,
        tlearn.Model.export,
    ):
        assert "Example:" in inspect.getdoc(method), method.__qualname__
    for field in tlearn.TrainConfig.model_fields:
        assert f"`{field}`" in reference, f"TrainConfig.{field} is missing from {API_REFERENCE}"


def test_the_torch_free_names_import_without_torch():
    code = (
        "import sys, tlearn\n"
        "for name in ('train', 'load', 'evaluate', 'predict', 'export', 'serve', 'demo', 'Model', 'TrainConfig',\n"
        "             'Run', 'RunReport', 'Evaluation', 'Prediction', 'InferenceEngine', 'imagenet_predictions',\n"
        "             'write_report', 'draw_dataset', 'TlearnError'):\n"
        "    getattr(tlearn, name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluate_is_the_same_on_both_engines_and_through_tlearn_evaluate(exported_model, tmp_path):
    on_torch = tlearn.load(exported_model.run).evaluate(exported_model.data, quiet=True)
    through_api = tlearn.evaluate(exported_model.run, exported_model.data, quiet=True)
    on_onnx = tlearn.load(exported_model.onnx).evaluate(exported_model.data, out=tmp_path / "eval", quiet=True)
    assert on_torch.split == "all" and on_torch.metrics["all"]["n"] == 28
    for other in (through_api, on_onnx):
        assert other.metrics["all"]["confusion_matrix"] == on_torch.metrics["all"]["confusion_matrix"]
        assert other.metrics["all"]["loss"] == pytest.approx(on_torch.metrics["all"]["loss"], abs=1e-4)
    assert (tmp_path / "eval" / "report.html").is_file() and (tmp_path / "eval" / "metrics.json").is_file()


def test_classifier_export_writes_a_checked_file_that_answers_the_same(exported_model, tmp_path):
    classifier = tlearn.load(exported_model.run)
    result = classifier.export(tmp_path / "model.onnx", check_data=exported_model.data, quiet=True)
    assert result.path == tmp_path / "model.onnx" and result.path.stat().st_size == result.size_bytes
    assert result.checks and all(check.passed for check in result.checks)
    images = sorted(exported_model.data.rglob("*.png"))[::5]
    exported_answers = tlearn.load(result.path).predict(images, top_k=1)
    assert [p.label for p in exported_answers] == [p.label for p in classifier.predict(images, top_k=1)]


def test_export_needs_the_model_directory(exported_model, tmp_path):
    loaded = tlearn.load(exported_model.run).backend
    in_memory = tlearn.Classifier(loaded.model, loaded.config, loaded.device)
    with pytest.raises(ModelFileError, match="needs a model directory"):
        tlearn.export(in_memory, tmp_path / "model.onnx")
    with pytest.raises(ModelFileError, match="needs a model directory"):
        tlearn.load(exported_model.onnx).export(tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_model_still_works_with_a_deprecation_warning(exported_model, tmp_path):
    with pytest.warns(DeprecationWarning, match="tlearn.export"):
        result = tlearn.export_model(exported_model.run, tmp_path / "model.pt", export_format="torchscript")
    assert result.path.is_file() and result.export_format == "torchscript"


class RecordingEngine(InferenceEngine):
    """Equal probabilities for every image; records the options each prediction call was given."""

    engine = "recording"

    def __init__(self) -> None:
        preprocessing = {"input_size": [8, 8], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
        config = ModelConfig(
            arch="none",
            backbone={"name": "none", "arch": "none"},
            classes=["blue", "red"],
            preprocessing={**preprocessing, "crop_pct": 1.0},
            embedding_dim=2,
            classifier_keys=("head.weight", "head.bias"),
            mode="linear",
        )
        super().__init__(config, path=None)
        self.received: list[PredictOptions] = []

    def _forward(self, pixels: np.ndarray, *, embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        return np.full((len(pixels), 2), 0.5, dtype=np.float32), None

    def iter_file_predictions(self, paths, options=DEFAULT_PREDICT_OPTIONS, *, progress=None):
        self.received.append(options)
        return super().iter_file_predictions(paths, options, progress=progress)

    def predict_files_scored(self, paths, options=DEFAULT_PREDICT_OPTIONS, *, progress=None, scores=True):
        self.received.append(options)
        return super().predict_files_scored(paths, options, progress=progress, scores=scores)


def test_the_keywords_of_predict_and_evaluate_reach_the_engine_as_one_options_object(tiny_data):
    engine = RecordingEngine()
    list(tlearn.predict(engine, [tiny_data / "red"], top_k=1, workers=0, reject=False))
    assert engine.received == [PredictOptions(top_k=1, workers=0, reject=False)]

    engine.received.clear()
    picture = Image.new("RGB", (8, 8))
    answers = tlearn.Model(engine).predict(
        [picture, *sorted((tiny_data / "red").iterdir())[:2]], top_k=2, batch_size=5, workers=0, reject=False
    )
    assert engine.received == [PredictOptions(top_k=2, batch_size=5, workers=0, reject=False)]
    assert [len(answer.labels) for answer in answers] == [2, 2, 2] and answers[0].source == "<image 0>"

    engine.received.clear()
    tlearn.evaluate(engine, tiny_data, tta=True, batch_size=3, workers=0, quiet=True)
    assert engine.received == [PredictOptions(batch_size=3, workers=0, flip=True)]


def test_a_model_has_every_public_member_of_its_engine_even_one_added_later():
    class NewerEngine(RecordingEngine):
        @property
        def novelty(self) -> str:
            return "added after Model was written"

    engine = NewerEngine()
    model = tlearn.Model(engine)
    assert model.novelty == "added after Model was written" and "novelty" in dir(model)
    assert (model.engine, model.classes, model.precision, model.path) == ("recording", ["blue", "red"], "fp32", None)
    assert model.config is engine.config and model.preprocessing is engine.preprocessing
    np.testing.assert_array_equal(model.probabilities(np.zeros((3, 8, 8, 3), np.uint8)), np.full((3, 2), 0.5))
    for missing in ("_forward", "no_such_member"):
        with pytest.raises(AttributeError, match=missing):
            getattr(model, missing)
    assert copy.copy(model).classes == ["blue", "red"]
    assert repr(model) == "Model(None, engine=recording, classes=['blue', 'red'])"


@pytest.mark.parametrize("model_file", ["run", "onnx"])
def test_one_image_in_one_answer_out_and_predict_proba_is_a_class_ordered_matrix(exported_model, model_file):
    """`predict` takes one image or many, `model(x)` is `predict(x)`, and `predict_proba` gives an (N, classes)
    array in `classes` order that agrees with the answers (scikit-learn's shapes)."""
    model = tlearn.load(exported_model.run if model_file == "run" else exported_model.onnx)
    files = sorted(exported_model.data.rglob("*.png"))[:4]
    answers = model.predict(files, top_k=2)
    single = model.predict(files[0], top_k=2)
    assert single.labels == answers[0].labels and single.probabilities == pytest.approx(
        answers[0].probabilities, rel=1e-3
    )
    assert model(str(files[0]), top_k=2) == single
    pixels = np.asarray(Image.open(files[1]).convert("RGB"))
    assert model.predict(pixels).label == answers[1].label
    assert [answer.label for answer in model.predict(np.stack([pixels, pixels]))] == [answers[1].label] * 2
    matrix = model.predict_proba(files)
    assert matrix.shape == (4, len(model.classes)) and model.predict_proba(files[0]).shape == (1, 2)
    assert np.allclose(matrix.sum(axis=1), 1.0)
    assert [model.classes[index] for index in matrix.argmax(axis=1)] == [answer.label for answer in answers]
    for row, answer in zip(matrix, answers, strict=True):
        assert row[model.classes.index(answer.labels[1])] == pytest.approx(answer.probabilities[1])


def test_predict_proba_refuses_an_unreadable_image_naming_it(exported_model, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    with pytest.raises(DataError, match=r"broken\.jpg: "):
        tlearn.load(exported_model.run).predict_proba([broken])
