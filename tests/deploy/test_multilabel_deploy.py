"""Exports and the service for models that answer with label sets or "unknown": the export is checked on the
scores and answers too, INT8 keeps the sigmoid in fp32, and the service and its page show those answers."""

from __future__ import annotations

import base64
import io
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

import tlearn
from answer_models import KNN_THRESHOLD, answer_models
from helpers import colour_image, served_model
from tlearn.deploy.exporters import onnx_exporter
from tlearn.deploy.exporters.int8 import sensitive_nodes
from tlearn.deploy.serving import ServeSettings, create_app
from tlearn.engines.answers import REFERENCES_FILE, KnnReferences
from tlearn.engines.loading import load_engine
from tlearn.engines.onnx_engine import CONFIG_KEY, EMBEDDINGS_NAME, OUTPUT_NAME, OnnxClassifier
from tlearn.engines.options import PredictOptions
from tlearn.errors import ExportError

LOCAL = "http://localhost"


@pytest.fixture(scope="module")
def models(exported_model, tmp_path_factory):
    return answer_models(exported_model, tmp_path_factory)


def png(path: Path) -> bytes:
    return path.read_bytes()


GREEN = colour_image((30, 200, 30), size=64, seed=3)


def green_png() -> bytes:
    buffer = io.BytesIO()
    GREEN.save(buffer, format="PNG")
    return buffer.getvalue()


def producer(graph, name: str):
    return next(node for node in graph.node if name in node.output)


# --- export ----------------------------------------------------------------------------------------------


def test_the_onnx_exports_carry_the_sigmoid_the_embeddings_and_the_rules(models):
    multilabel = onnx.load(str(models.multilabel_onnx))
    assert [output.name for output in multilabel.graph.output] == [OUTPUT_NAME]
    assert producer(multilabel.graph, OUTPUT_NAME).op_type == "Sigmoid"
    config = json.loads({p.key: p.value for p in multilabel.metadata_props}[CONFIG_KEY])
    assert config["task"] == "multilabel" and config["thresholds"] == load_engine(models.multilabel).config.thresholds
    knn = onnx.load(str(models.knn_onnx))
    assert [output.name for output in knn.graph.output] == [OUTPUT_NAME, EMBEDDINGS_NAME]
    assert producer(knn.graph, OUTPUT_NAME).op_type == "Softmax"
    config = json.loads({p.key: p.value for p in knn.metadata_props}[CONFIG_KEY])
    assert config["reject"] == {"score": "knn", "threshold": KNN_THRESHOLD, "k": 3, "target": {}}
    checks = OnnxClassifier.load(models.knn_onnx).export_info["checks"]
    assert checks[0]["max_score_diff"] <= 1e-3 and checks[0]["answer_agreement"] == 1.0 and checks[0]["passed"]
    assert "max |Δscore|" in checks[0]["limit"]
    checks = OnnxClassifier.load(models.multilabel_onnx).export_info["checks"]
    assert checks[0]["answer_agreement"] == 1.0 and checks[0]["max_score_diff"] is None


def test_a_reject_score_the_export_gets_wrong_fails_the_check(models, monkeypatch, tmp_path):
    class Skewed:
        @staticmethod
        def load(path, **options):
            model = OnnxClassifier.load(path, **options)

            class Shifted:
                def __getattr__(self, name):
                    return getattr(model, name)

                def scored_probabilities(self, pixels, **flip):
                    probabilities, scores = model.scored_probabilities(pixels, **flip)
                    return probabilities, scores + 0.01  # 0.01 > the 1e-3 allowed; the probabilities are right

            return Shifted()

    monkeypatch.setattr(onnx_exporter, "OnnxClassifier", Skewed)
    out = tmp_path / "knn.onnx"
    with pytest.raises(ExportError, match=r"check onnx fp32 vs pytorch: .*max \|Δscore\| 1\.00e-02.* FAILED"):
        tlearn.export(models.knn, out, check_data=models.data)
    assert not out.exists()


def multilabel_with_thresholds(models, folder: Path, thresholds: list[float]) -> Path:
    from safetensors.numpy import load_file

    from tlearn.runs.model_dir import read_config, save_model

    config = read_config(models.multilabel).model_copy(update={"thresholds": thresholds})
    return save_model(folder, load_file(models.multilabel / "model.safetensors"), config)


@pytest.mark.parametrize("which", ["multilabel", "knn"])
def test_int8_keeps_the_classifier_and_its_sigmoid_in_fp32_and_agrees_on_answers(models, tmp_path, which):
    # Thresholds of 0.5 lie far from every image's probability (about 0.1 or 0.9), as a knn score of 0.6 does.
    folder = multilabel_with_thresholds(models, tmp_path / "wide", [0.5, 0.5]) if which == "multilabel" else models.knn
    result = tlearn.export(
        folder, tmp_path / "int8.onnx", int8=True, calibration_data=models.data, check_data=models.data
    )
    check = result.checks[1]
    assert result.precision == "int8-static" and check.passed and check.answer_agreement == 1.0
    graph = onnx.load(str(result.path)).graph
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)  # the backbone is quantized
    last = producer(graph, OUTPUT_NAME)
    assert last.op_type == ("Sigmoid" if which == "multilabel" else "Softmax")
    path = [last]
    while path[-1].op_type != "Gemm":  # back from the output to the classifier: fp32 all the way
        path.append(producer(graph, path[-1].input[0]))
    assert not {"QuantizeLinear", "DequantizeLinear"} & {node.op_type for node in path}
    classifier = path[-1]
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    assert initializers[classifier.input[1]].data_type == onnx.TensorProto.FLOAT  # fp32 classifier weights
    if which == "knn":
        answers = load_engine(result.path).predict(sorted(models.unseen.glob("*.png")), PredictOptions(workers=0))
        assert [answer.label for answer in answers] == ["unknown"] * 4


def test_int8_that_changes_label_sets_is_refused(models, tmp_path):
    # The session model's thresholds sit between two images' probabilities: INT8 moves some across them.
    out = tmp_path / "int8.onnx"
    with pytest.raises(
        ExportError, match=r"int8-static vs onnx fp32: .*same answer \d+\.\d+%.*agreement ≥ 99%.*FAILED"
    ):
        tlearn.export(models.multilabel, out, int8=True, calibration_data=models.data, check_data=models.data)
    assert not out.exists()


def test_int8_spares_the_final_sigmoid_but_not_the_backbones_sigmoids(models):
    graph = onnx.load(str(models.multilabel_onnx)).graph
    spared = set(sensitive_nodes(graph))
    sigmoids = [node.name for node in graph.node if node.op_type == "Sigmoid"]
    assert len(sigmoids) > 5 and [name for name in sigmoids if name in spared] == [producer(graph, OUTPUT_NAME).name]


def test_torchscript_export_of_a_knn_model_holds_its_references_and_embeddings(models, tmp_path):
    result = tlearn.export(models.knn, tmp_path / "knn.pt", export_format="torchscript", check_data=models.data)
    assert result.checks[0].passed and result.checks[0].max_score_diff <= 1e-3
    extra = {"config.json": "", REFERENCES_FILE: ""}
    scripted = torch.jit.load(io.BytesIO(result.path.read_bytes()), _extra_files=extra)
    assert extra[REFERENCES_FILE] == (models.knn / REFERENCES_FILE).read_bytes()
    assert json.loads(extra["config.json"])["reject"]["score"] == "knn"
    with torch.no_grad():
        probabilities, embeddings = scripted(torch.zeros(2, 3, 160, 160))
    references = KnnReferences.from_bytes(extra[REFERENCES_FILE], "torchscript")
    assert probabilities.shape == (2, 2) and embeddings.shape == (2, len(references.mean))


@pytest.mark.parametrize("which", ["knn", "multilabel"])
def test_openvino_export_of_knn_and_multilabel_models_checks_their_answers_and_holds_their_references(
    models, tmp_path, which
):
    openvino = pytest.importorskip("openvino", reason='OpenVINO is an optional extra: pip install "tlearn[openvino]"')
    from tlearn.deploy.exporters.openvino_exporter import REFERENCES_KEY, RT_INFO_ROOT

    model = getattr(models, which)
    result = tlearn.export(model, tmp_path / f"{which}.xml", export_format="openvino", check_data=models.data)
    (check,) = result.checks
    assert check.passed and check.answer_agreement == 1.0
    ir = openvino.Core().read_model(result.path)
    if which == "knn":
        assert check.max_score_diff <= 1e-3 and len(ir.outputs) == 2
        stored = base64.b64decode(ir.get_rt_info([RT_INFO_ROOT, REFERENCES_KEY]).astype(str))
        assert stored == (models.knn / REFERENCES_FILE).read_bytes()
    else:
        assert not ir.has_rt_info([RT_INFO_ROOT, REFERENCES_KEY])


# --- the service -------------------------------------------------------------------------------------------


@contextmanager
def client_for(engine):
    with TestClient(create_app(lambda: engine, ServeSettings()), base_url=LOCAL) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        yield client


def test_the_service_answers_a_multilabel_models_label_sets_as_the_model_directory_does(models):
    files = sorted(models.data.rglob("*.png"))[::3]
    expected = load_engine(models.multilabel, device="cpu").predict(files, PredictOptions(top_k=2, workers=0))
    with client_for(load_engine(models.multilabel_onnx)) as client:
        body = client.post(
            "/v1/predict?top_k=2", files=[("files", (path.name, png(path), "image/png")) for path in files]
        ).json()
        model = client.get("/v1/model").json()
    predictions = body["predictions"]
    assert [p["label_set"] for p in predictions] == [p.label_set for p in expected]
    assert any(len(p["label_set"]) == 2 for p in predictions)
    for given, wanted in zip(predictions, expected, strict=True):
        assert given["file"] == Path(wanted.source).name and given["label"] == wanted.label
        np.testing.assert_allclose(given["label_set_probabilities"], wanted.label_set_probabilities, atol=1e-4)
        assert "unknown" not in given and "source" not in given and "error" not in given
    assert model["task"] == "multilabel" and model["thresholds"] == expected_thresholds(models)
    assert model["reject"] is None


def expected_thresholds(models) -> list[float]:
    return load_engine(models.multilabel).config.thresholds


@pytest.mark.parametrize("path", ["knn", "knn_onnx"])
def test_the_service_answers_unknown_with_its_score_unless_asked_not_to(models, path):
    red = png(sorted((models.data / "red").glob("*.png"))[0])
    uploads = [("files", ("green.png", green_png(), "image/png")), ("files", ("red.png", red, "image/png"))]
    with client_for(load_engine(getattr(models, path), device="cpu")) as client:
        green, known = client.post("/v1/predict?top_k=1", files=uploads).json()["predictions"]
        anyway = client.post("/v1/predict?top_k=1&reject=false", files=uploads[:1]).json()["predictions"][0]
        model = client.get("/v1/model").json()
    assert green["label"] == "unknown" and green["unknown"] is True and green["reject_score"] < KNN_THRESHOLD
    assert green["labels"][0] in ("blue", "red")  # the best guess is still there
    assert known["label"] == "red" and known["unknown"] is False and known["reject_score"] >= KNN_THRESHOLD
    assert anyway["label"] == green["labels"][0] and anyway["unknown"] is False
    assert anyway["reject_score"] == pytest.approx(green["reject_score"])
    assert model["reject"]["score"] == "knn" and model["reject"]["threshold"] == KNN_THRESHOLD
    assert model["task"] == "multiclass" and model["thresholds"] is None


def upload_on_page(browser, url: str, image: Path):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#model:has-text('2 classes')", timeout=30_000)
    page.set_input_files("#picker", str(image))
    page.wait_for_selector(".card .bar", timeout=30_000)
    return page


def test_the_page_shows_unknown_with_the_score(browser, models, tmp_path):
    image = tmp_path / "green.png"
    GREEN.save(image)
    with served_model(models.knn_onnx) as url:
        page = upload_on_page(browser, url, image)
        try:
            answer = page.locator(".card .answer").inner_text()
            assert "unknown" in page.locator("#model").inner_text()  # the rule is described
            assert page.locator(".card .answer.unknown").count() == 1
        finally:
            page.close()
    assert answer.startswith("unknown · score 0.")
    score = float(answer.rsplit(" ", 1)[1])
    assert score < KNN_THRESHOLD


def test_the_page_shows_every_label_above_its_threshold(browser, models):
    files = sorted(models.data.rglob("*.png"))
    expected = load_engine(models.multilabel_onnx).predict(files, PredictOptions(top_k=1, workers=0))
    both = next(prediction for prediction in expected if len(prediction.label_set) == 2)
    with served_model(models.multilabel_onnx) as url:
        page = upload_on_page(browser, url, Path(both.source))
        try:
            chosen = [row.get_attribute("data-label") for row in page.query_selector_all(".card .bar.chosen")]
            answer = page.locator(".card .answer").inner_text()
            described = page.locator("#model").inner_text()
        finally:
            page.close()
    assert chosen == both.label_set and answer == ", ".join(both.label_set) and "multi-label" in described
