"""Model files that were edited, mixed up or tampered with are refused at load with one clear line:
a non-positive temperature, a preprocessing that cannot be applied, an absurd input size, or a class list that
does not match the classifier's rows (model directory) or the graph's output (ONNX)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import tlearn
from helpers import edited_model_dir, edited_onnx, run_cli
from tlearn.deploy.serving import create_app
from tlearn.engines.loading import load_engine
from tlearn.errors import ModelFileError


def set_path(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


BAD_CONFIGS = [
    ("temperature", 0.0, r"temperature 0.0 must be a positive number"),
    ("temperature", -1.5, r"temperature -1.5 must be a positive number"),
    ("temperature", float("nan"), r"temperature nan must be a positive number"),
    ("preprocessing.crop_pct", 0.0, r"crop_pct 0.0 must be between 0.25 and 2.0"),
    ("preprocessing.crop_pct", 0.001, r"crop_pct 0.001 must be between"),
    ("preprocessing.input_size", [100000, 100000], r"input_size \[100000, 100000\] must be \(height, width\)"),
    ("preprocessing.input_size", [0, 160], r"input_size \[0, 160\]"),
    ("preprocessing.input_size", [160.5, 160], r"input_size \[160.5, 160\]"),
    ("preprocessing.interpolation", "magic", r"unusable preprocessing .*unsupported interpolation 'magic'"),
    ("preprocessing.std", [0.0, 0.2, 0.2], r"std \[0.0, 0.2, 0.2\] must be three positive numbers"),
    ("classes", ["blue", "blue"], r"class name\(s\) 'blue' listed twice"),
]


@pytest.mark.parametrize("field, value, message", BAD_CONFIGS)
def test_a_model_directory_with_unusable_values_is_refused_at_load(exported_model, tmp_path, field, value, message):
    folder = edited_model_dir(exported_model, tmp_path, lambda config: set_path(config, field, value))
    with pytest.raises(ModelFileError, match=message) as refused:
        tlearn.load(folder)
    assert str(refused.value).startswith(f"{folder / 'config.json'}: ") and "\n" not in str(refused.value)


def test_a_class_list_that_does_not_match_the_classifier_is_refused(exported_model, tmp_path, capsys):
    folder = edited_model_dir(exported_model, tmp_path, lambda config: config["classes"].append("green"))
    with pytest.raises(ModelFileError, match=r"classifier has 2 output rows but config.json lists 3 classes"):
        tlearn.load(folder)
    image = next(exported_model.data.rglob("*.png"))
    code, out, err = run_cli(capsys, "predict", folder, image)
    assert code == 2 and out == "" and err.count("\n") == 1 and "different models" in err


def test_a_missing_classifier_is_refused(exported_model, tmp_path):
    folder = edited_model_dir(
        exported_model, tmp_path, lambda config: config.update(classifier_keys=["head.weight", "head.bias"])
    )
    with pytest.raises(ModelFileError, match=r"no classifier head.weight, head.bias"):
        tlearn.load(folder)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", 0.0, r"\(metadata tlearn_config\): temperature 0.0 must be a positive number"),
        ("preprocessing.crop_pct", 0.0, r"crop_pct 0.0 must be between"),
        ("preprocessing.input_size", [96, 96], r"takes input of shape .*160, 160.* preprocessing gives .*96, 96"),
        ("classes", ["blue", "red", "green"], r"outputs shape .*2\] but the metadata lists 3 classes"),
    ],
)
def test_an_onnx_file_with_unusable_metadata_is_refused_at_load(exported_model, tmp_path, field, value, message):
    path = edited_onnx(exported_model, tmp_path, lambda config: set_path(config, field, value))
    with pytest.raises(ModelFileError, match=message) as refused:
        load_engine(path)
    assert "\n" not in str(refused.value)


def test_the_service_reports_a_refused_model_as_not_ready_without_its_folders(exported_model, tmp_path):
    folder = edited_model_dir(exported_model, tmp_path, lambda config: config.update(temperature=-1.0))
    with TestClient(create_app(lambda: load_engine(folder)), base_url="http://localhost") as client:
        readiness = client.get("/readyz")
        while readiness.json()["status"] == "loading":  # loading runs in the background; it ends in failure
            readiness = client.get("/readyz")
        assert readiness.status_code == 503 and "temperature -1.0 must be a positive number" in readiness.text
        assert str(tmp_path) not in readiness.text and "config.json" in readiness.text
