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
from tlearn.engines.answers import (
    REFERENCES_FILE,
    UNKNOWN,
    KnnReferences,
    answer_keys,
    calibrated,
    confidence,
    is_rejected,
    needs_embeddings,
    read_references,
    reject_scores,
)
from tlearn.engines.base import Prediction
from tlearn.engines.loading import load_engine
from tlearn.engines.onnx_engine import REFERENCES_KEY
from tlearn.engines.options import PredictOptions
from tlearn.errors import ModelFileError
from tlearn.runs.model_dir import ModelConfig, RejectRule


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


def _config(**fields) -> ModelConfig:
    """A model's config.json with two classes of 3-D embeddings, plus `fields`."""
    base = {
        "arch": "tiny",
        "backbone": {"name": "tiny"},
        "classes": ["blue", "red"],
        "preprocessing": {},
        "embedding_dim": 3,
        "classifier_keys": ("head.weight", "head.bias"),
        "mode": "linear",
    }
    return ModelConfig(**{**base, **fields})


def test_knn_references_standardise_and_score_the_kth_nearest_training_embedding():
    """The knn score is the cosine similarity to the k-th nearest reference after standardising by the training
    embeddings' mean and spread (a constant dimension counts as spread 1); k is clipped to the references."""
    embeddings = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0], [-1.0, 0.0, 5.0], [0.0, -1.0, 5.0]], dtype=np.float32)
    references = KnnReferences.from_embeddings(embeddings)
    np.testing.assert_allclose(references.mean, [0.0, 0.0, 5.0])
    np.testing.assert_allclose(references.scale, [np.sqrt(0.5), np.sqrt(0.5), 1.0])  # the constant column: 1
    np.testing.assert_allclose(np.linalg.norm(references.vectors, axis=1), 1.0, atol=1e-6)
    query = np.array([[2.0, 0.1, 5.0], [0.0, 0.0, 5.0]], dtype=np.float32)  # near the first; at the mean
    direction = np.array([2.0, 0.1]) / np.linalg.norm([2.0, 0.1])
    expected = {  # k: the first query's k-th highest cosine with the four unit directions
        1: direction[0],
        2: direction[1],
        3: -direction[1],
        4: -direction[0],
    }
    for k, value in expected.items():
        scores = references.similarity(query, k)
        assert scores.dtype == np.float32 and scores.shape == (2,)
        assert scores[0] == pytest.approx(value, abs=1e-5), k
        assert scores[1] == 0.0  # an embedding at the mean: no direction, similarity 0 (never NaN)
    assert references.similarity(query, 0)[0] == pytest.approx(expected[1], abs=1e-5)  # at least the nearest
    assert references.similarity(query, 99)[0] == pytest.approx(expected[4], abs=1e-5)  # at most the farthest


def test_knn_scores_do_not_depend_on_how_many_images_come_at_once(monkeypatch):
    """Images are compared with the references a chunk at a time: every image gets its own score, whatever the
    batch size."""
    rng = np.random.default_rng(0)
    references = KnnReferences.from_embeddings(rng.normal(size=(40, 6)).astype(np.float32))
    images = rng.normal(size=(7, 6)).astype(np.float32)
    one_by_one = np.array([references.similarity(images[n : n + 1], 3)[0] for n in range(len(images))])
    monkeypatch.setattr("tlearn.engines.answers.SIMILARITY_CHUNK", 3)
    np.testing.assert_allclose(references.similarity(images, 3), one_by_one, atol=1e-6)


def test_knn_references_keep_a_seeded_sample_beyond_the_limit_and_survive_their_file():
    """Beyond `limit` training embeddings a seeded sample is kept (the same each time); the file round-trips
    with float16 vectors."""
    embeddings = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    kept = KnnReferences.from_embeddings(embeddings, limit=10, seed=3)
    assert kept.vectors.shape == (10, 4)
    again = KnnReferences.from_embeddings(embeddings, limit=10, seed=3)
    np.testing.assert_array_equal(kept.vectors, again.vectors)
    other = KnnReferences.from_embeddings(embeddings, limit=10, seed=4)
    assert not np.array_equal(kept.vectors, other.vectors)
    rows = np.sort(np.random.default_rng(3).choice(30, size=10, replace=False))
    np.testing.assert_allclose(kept.mean, embeddings[rows].mean(axis=0), atol=1e-6)
    assert KnnReferences.from_embeddings(embeddings, limit=30).vectors.shape == (30, 4)  # at the limit: all
    loaded = KnnReferences.from_bytes(kept.to_bytes(), "test")
    np.testing.assert_array_equal(loaded.mean, kept.mean)
    np.testing.assert_array_equal(loaded.scale, kept.scale)
    np.testing.assert_allclose(loaded.vectors, kept.vectors, atol=1e-3)
    assert loaded.vectors.dtype == np.float32


def _payload(**arrays) -> bytes:
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(value, dtype=np.float32) for name, value in arrays.items()})


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"mean": np.zeros(3), "scale": np.ones(3)}, "where: unreadable reject references ("),
        ({"mean": np.zeros((1, 3)), "scale": np.ones((1, 3)), "vectors": np.ones((2, 3))}, "mismatched shapes"),
        ({"mean": np.zeros(3), "scale": np.ones(2), "vectors": np.ones((2, 3))}, "mismatched shapes"),
        ({"mean": np.zeros(3), "scale": np.ones(3), "vectors": np.ones(3)}, "mismatched shapes"),
        ({"mean": np.zeros(3), "scale": np.ones(3), "vectors": np.ones((2, 4))}, "mismatched shapes"),
        ({"mean": np.zeros(3), "scale": np.ones(3), "vectors": np.ones((0, 3))}, "empty or not finite"),
        ({"mean": np.zeros(3), "scale": np.ones(3), "vectors": [[1, np.nan, 0]]}, "empty or not finite"),
        ({"mean": np.zeros(3), "scale": [1, 0, 1], "vectors": np.ones((2, 3))}, "empty or not finite"),
    ],
)
def test_reject_references_that_cannot_score_are_refused_with_the_reason(arrays, message):
    """References with a missing array, shapes that do not fit together, no rows, or non-finite values would
    score wrongly or crash later: they are a one-line ModelFileError naming the file."""
    with pytest.raises(ModelFileError) as raised:
        KnnReferences.from_bytes(_payload(**arrays), "where")
    text = str(raised.value)
    assert text.startswith("where: ") and message in text and "\n" not in text
    if message != "where: unreadable reject references (":
        assert text.endswith("; train the model again")


def test_references_are_read_only_for_a_knn_rule_and_must_fit_the_model(tmp_path):
    """A model without a knn rule needs no references file; one with it gets them checked against its
    embedding size."""
    assert read_references(tmp_path, _config()) is None
    confidence_rule = RejectRule(score="confidence", threshold=0.5)
    assert read_references(tmp_path, _config(reject=confidence_rule)) is None
    knn = _config(reject=RejectRule(score="knn", threshold=0.5, k=2))
    with pytest.raises(ModelFileError) as raised:
        read_references(tmp_path, knn)
    assert (
        str(raised.value)
        == f"{tmp_path / REFERENCES_FILE}: the model's reject rule needs this file (No such file or directory)"
    )
    (tmp_path / REFERENCES_FILE).write_bytes(KnnReferences.from_embeddings(np.eye(3, dtype=np.float32)).to_bytes())
    assert read_references(tmp_path, knn).vectors.shape == (3, 3)
    with pytest.raises(ModelFileError) as raised:
        read_references(tmp_path, _config(reject=knn.reject, embedding_dim=4))
    assert str(raised.value) == f"{tmp_path / REFERENCES_FILE}: references of 3 dimensions for a 4-dimensional model"


def test_reject_rules_turn_down_scores_below_the_threshold_only():
    """An image is "unknown" when its score is below the threshold: one at the threshold is answered, and
    without a rule or a score nothing is rejected."""
    rule = RejectRule(score="confidence", threshold=0.6)
    assert is_rejected(rule, 0.59) and not is_rejected(rule, 0.6) and not is_rejected(rule, 0.9)
    assert not is_rejected(None, 0.1) and not is_rejected(rule, None)
    probabilities = np.array([[0.7, 0.3], [0.45, 0.55], [0.6, 0.4]], dtype=np.float32)
    np.testing.assert_allclose(reject_scores(rule, probabilities, None, None), [0.7, 0.55, 0.6])
    assert confidence(np.zeros((0, 2), dtype=np.float32)).shape == (0,)
    assert confidence(np.empty((0, 0), dtype=np.float32)).shape == (0,)  # what an empty request gets
    knn = RejectRule(score="knn", threshold=0.5, k=1)
    references = KnnReferences.from_embeddings(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="needs the images' embeddings and the model's references"):
        reject_scores(knn, probabilities, None, references)
    with pytest.raises(ValueError, match="needs the images' embeddings"):
        reject_scores(knn, probabilities, np.eye(3, dtype=np.float32), None)
    embeddings = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(
        reject_scores(knn, probabilities, embeddings, references), references.similarity(embeddings, 1)
    )
    assert needs_embeddings(_config(reject=knn)) and not needs_embeddings(_config(reject=rule))
    assert not needs_embeddings(_config())


def test_answer_keys_give_unknown_the_top_class_or_the_label_set():
    """The comparable answers the export checks use: UNKNOWN under the rule, else the top class (multiclass)
    or every class reaching its threshold, most probable first (multi-label)."""
    probabilities = np.array([[0.2, 0.8], [0.65, 0.35], [0.55, 0.45]], dtype=np.float32)
    rule = RejectRule(score="confidence", threshold=0.6)
    assert answer_keys(_config(), probabilities, None) == [(1,), (0,), (0,)]
    assert answer_keys(_config(reject=rule), probabilities, np.array([0.8, 0.65, 0.55])) == [(1,), (0,), UNKNOWN]
    multilabel = _config(task="multilabel", thresholds=[0.5, 0.3])
    assert answer_keys(multilabel, probabilities, None) == [(1,), (0, 1), (0, 1)]
    assert answer_keys(multilabel, np.array([[0.4, 0.2]]), None) == [()]


def test_calibrated_probabilities_divide_the_logits_by_the_temperature():
    """Calibration divides logits by the model's temperature before the softmax (or each sigmoid)."""
    logits = np.array([[2.0, 0.0]], dtype=np.float32)
    softmax = calibrated(logits, _config(temperature=2.0))
    np.testing.assert_allclose(softmax, [[np.exp(1) / (np.exp(1) + 1), 1 / (np.exp(1) + 1)]], rtol=1e-5)
    sigmoids = calibrated(logits, _config(temperature=4.0, task="multilabel", thresholds=[0.5, 0.5]))
    np.testing.assert_allclose(sigmoids, [[sigmoid(0.5), 0.5]], rtol=1e-5)


def test_a_training_image_is_fully_familiar_whatever_the_spread_of_each_dimension():
    """References and queries are standardised the same way: a training embedding is its own nearest
    reference (similarity 1), even when the dimensions' spreads differ a hundredfold."""
    rng = np.random.default_rng(2)
    embeddings = (rng.normal(size=(20, 3)) * [1.0, 10.0, 100.0] + [5.0, -3.0, 0.0]).astype(np.float32)
    references = KnnReferences.from_embeddings(embeddings)
    np.testing.assert_allclose(references.similarity(embeddings, 1), 1.0, atol=1e-5)
    standardised = (embeddings - embeddings.mean(axis=0)) / embeddings.std(axis=0)
    expected = standardised / np.linalg.norm(standardised, axis=1, keepdims=True)
    np.testing.assert_allclose(references.vectors, expected, atol=1e-5)


def test_the_references_file_stores_the_vectors_in_half_precision():
    """`reject.safetensors` keeps the vectors in float16 (half the size: 12.8 MB for 5000 at 1280-D)."""
    from safetensors.numpy import load

    references = KnnReferences.from_embeddings(np.random.default_rng(3).normal(size=(50, 8)).astype(np.float32))
    stored = load(references.to_bytes())
    assert stored["vectors"].dtype == np.float16 and stored["vectors"].shape == (50, 8)
    assert stored["mean"].dtype == stored["scale"].dtype == np.float32
