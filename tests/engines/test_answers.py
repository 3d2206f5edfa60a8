"""Label sets and "unknown" answers: both engines apply a model's thresholds and reject rule the same way, and
a model without them answers exactly as before."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import onnx
import pytest

from answer_models import KNN_THRESHOLD, TEMPERATURE, answer_models, reference_outputs, sigmoid
from helpers import run_cli
from tlearn.engines.answers import REFERENCES_FILE, KnnReferences
from tlearn.engines.base import Prediction
from tlearn.engines.loading import load_engine
from tlearn.engines.onnx_engine import REFERENCES_KEY
from tlearn.engines.options import PredictOptions
from tlearn.errors import ModelFileError


@pytest.fixture(scope="module")
def models(exported_model, tmp_path_factory):
    return answer_models(exported_model, tmp_path_factory)


def files_of(models) -> list:
    return [*sorted(models.data.rglob("*.png")), *sorted(models.unseen.glob("*.png"))]


def test_a_multilabel_model_answers_the_classes_whose_sigmoid_reaches_their_threshold(models):
    files = files_of(models)
    logits, _ = reference_outputs(models.multilabel, files)
    expected_probabilities = sigmoid(logits / TEMPERATURE)  # (N, C): a sigmoid per class, not a softmax
    torch_engine = load_engine(models.multilabel, device="cpu")
    thresholds = np.array(torch_engine.config.thresholds)
    classes = torch_engine.classes
    expected_sets = [
        [classes[c] for c in sorted(np.flatnonzero(row >= thresholds), key=lambda c: -row[c])]
        for row in expected_probabilities
    ]
    assert {len(chosen) for chosen in expected_sets} == {1, 2}  # some images get both labels
    for engine in (torch_engine, load_engine(models.multilabel_onnx)):
        answers = engine.predict(files, PredictOptions(top_k=1, workers=0))
        assert [answer.label_set for answer in answers] == expected_sets, engine.engine
        assert [answer.label for answer in answers] == [chosen[0] if chosen else None for chosen in expected_sets]
        for answer, row in zip(answers, expected_probabilities, strict=True):
            expected = [row[classes.index(label)] for label in answer.label_set]
            np.testing.assert_allclose(answer.label_set_probabilities, expected, atol=1e-4)
            assert answer.labels == [classes[int(np.argmax(row))]] and not answer.unknown
        assert answers[0].to_dict().keys() == {
            "source",
            "labels",
            "probabilities",
            "error",
            "label",
            "label_set",
            "label_set_probabilities",
        }


def test_a_multilabel_answer_may_be_empty_and_lists_every_label_reaching_its_threshold(models):
    engine = load_engine(models.multilabel_onnx)
    blue, red = engine.config.thresholds
    nothing = engine.answer("x.png", np.array([blue - 0.01, red - 0.02]), PredictOptions(top_k=2))
    assert nothing.label_set == [] and nothing.label is None and nothing.labels == ["blue", "red"]
    both = engine.answer("y.png", np.array([blue, red + 0.2]), PredictOptions(top_k=1))
    assert both.label_set == ["red", "blue"] and both.label_set_probabilities == pytest.approx([red + 0.2, blue])
    assert both.labels == ["red"] and both.to_dict()["label"] == "red"


def test_a_knn_rule_answers_unknown_far_from_the_references_on_both_engines(models):
    files = files_of(models)
    unseen = [path.parent == models.unseen for path in files]
    _, embeddings = reference_outputs(models.knn, files)
    references = KnnReferences.from_bytes((models.knn / REFERENCES_FILE).read_bytes(), "test")
    expected_scores = references.similarity(embeddings, 3)
    assert (expected_scores >= KNN_THRESHOLD).tolist() == [not far for far in unseen]
    for engine in (load_engine(models.knn, device="cpu"), load_engine(models.knn_onnx)):
        answers = engine.predict(files, PredictOptions(top_k=2, workers=0))
        np.testing.assert_allclose([a.reject_score for a in answers], expected_scores, atol=1e-3)
        assert [a.unknown for a in answers] == unseen, engine.engine
        assert [a.label for a in answers] == [
            "unknown" if far else path.parent.name for path, far in zip(files, unseen, strict=True)
        ]
        assert all(len(a.labels) == 2 and set(a.labels) == {"blue", "red"} for a in answers)  # the best guesses
        far = answers[-1].to_dict()
        assert far["label"] == "unknown" and far["unknown"] is True and far["reject_score"] < KNN_THRESHOLD
        anyway = engine.predict(files[-1:], PredictOptions(top_k=1, workers=0, reject=False))[0]
        assert anyway.label in ("blue", "red") and not anyway.unknown
        assert anyway.reject_score == pytest.approx(answers[-1].reject_score)


def test_a_confidence_rule_on_a_multilabel_model_scores_the_top_class_probability(models):
    files = files_of(models)
    logits, _ = reference_outputs(models.multilabel_confidence, files)
    top = sigmoid(logits / TEMPERATURE).max(axis=1)
    engine = load_engine(models.multilabel_confidence, device="cpu")
    answers = engine.predict(files, PredictOptions(workers=0))
    np.testing.assert_allclose([a.reject_score for a in answers], top, atol=1e-5)
    threshold = engine.config.reject.threshold
    assert [a.unknown for a in answers] == (top < threshold).tolist() and 0 < sum(top < threshold) < len(files)
    assert all(a.label_set is not None for a in answers)  # a rejected image still shows its label set


def test_a_plain_model_keeps_its_answers_and_their_shape(exported_model):
    engine = load_engine(exported_model.onnx)
    files = sorted(exported_model.data.rglob("*.png"))[:3]
    answers = engine.predict(files, PredictOptions(top_k=2, workers=0))
    for answer in answers:
        assert answer.to_dict() == {
            "source": answer.source,
            "labels": answer.labels,
            "probabilities": answer.probabilities,
            "error": None,
        }
        assert answer.label == answer.labels[0] == answer.source.split("/")[-2]
        assert answer.label_set is None and answer.reject_score is None and not answer.unknown
    probabilities, scores = engine.scored_probabilities(np.zeros((2, 160, 160, 3), dtype=np.uint8))
    assert scores is None and np.allclose(probabilities.sum(axis=1), 1.0)  # a softmax


def test_prediction_labels():
    assert Prediction("a", ["x", "y"], [0.6, 0.4], label_set=[], label_set_probabilities=[]).label is None
    assert Prediction("a", ["x"], [0.6], label_set=["y", "x"], label_set_probabilities=[0.7, 0.6]).label == "y"
    rejected = Prediction("a", ["x"], [0.6], unknown=True, reject_score=0.1)
    assert rejected.label == "unknown" and rejected.to_dict()["labels"] == ["x"]
    assert Prediction("a", error="broken").label is None


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "reject.safetensors: the model's reject rule needs this file"),
        ("garbage", "reject.safetensors: unreadable reject references"),
        ("other size", "references of 3 dimensions for a"),
    ],
)
def test_missing_or_corrupt_references_are_a_one_line_model_file_error(models, tmp_path, capsys, damage, message):
    folder = tmp_path / "knn"
    shutil.copytree(models.knn, folder)
    references = folder / REFERENCES_FILE
    if damage == "missing":
        references.unlink()
    elif damage == "garbage":
        references.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not safetensors")
    else:
        references.write_bytes(KnnReferences.from_embeddings(np.eye(3, dtype=np.float32)).to_bytes())
    with pytest.raises(ModelFileError, match=message) as raised:
        load_engine(folder, device="cpu")
    assert "\n" not in str(raised.value)
    code, _, err = run_cli(capsys, "predict", folder, models.unseen, "-q")
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "missing, and the model's knn reject rule needs it"),
        ("not base64!", "not base64"),
        ("AAAA", "unreadable"),
    ],
)
def test_an_onnx_file_without_usable_references_is_refused(models, tmp_path, value, message):
    proto = onnx.load(str(models.knn_onnx))
    kept = [prop for prop in proto.metadata_props if prop.key != REFERENCES_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    if value is not None:
        proto.metadata_props.add(key=REFERENCES_KEY, value=value)
    damaged = tmp_path / "damaged.onnx"
    onnx.save(proto, str(damaged))
    with pytest.raises(ModelFileError, match=message) as raised:
        load_engine(damaged)
    assert "\n" not in str(raised.value)


def test_the_onnx_file_carries_the_references_of_the_model_directory(models):
    metadata = {prop.key: prop.value for prop in onnx.load(str(models.knn_onnx)).metadata_props}
    stored = KnnReferences.from_bytes(base64.b64decode(metadata[REFERENCES_KEY]), "onnx")
    original = KnnReferences.from_bytes((models.knn / REFERENCES_FILE).read_bytes(), "directory")
    np.testing.assert_array_equal(stored.vectors, original.vectors)
    np.testing.assert_array_equal(stored.mean, original.mean)
