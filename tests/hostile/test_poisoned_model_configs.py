"""A run's `model/config.json` is user-supplied input: a poisoned one never gives a silent wrong answer.

Each case copies the session's real trained model (`exported_model`), tampers with its config.json (or its
weights, or an ONNX file's metadata) and checks what a user sees: one line naming the file and the field,
exit code 2 from the CLI, a 503 (not ready) or 422 from the service — never NaN probabilities with exit code 0,
never a download or a read outside the model folder because of what the config names, never a newer format
read as if it were this one.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
from fastapi.testclient import TestClient
from safetensors.numpy import load_file, save_file

import tlearn
from helpers import colour_image, edited_model_dir, edited_onnx, png_with_size, run_cli
from tlearn.data.images import ImageTooLargeError, load_rgb
from tlearn.deploy.serving import ServeSettings, create_app
from tlearn.engines.loading import load_engine
from tlearn.errors import ModelFileError, ModelOutputError
from tlearn.runs import model_dir

LOCAL = "http://localhost"


def nan_weights(exported_model, tmp_path: Path) -> Path:
    """A copy of the model whose config.json is untouched but whose classifier bias is NaN."""
    folder = edited_model_dir(exported_model, tmp_path, lambda config: None)
    _, bias_key = json.loads((folder / "config.json").read_text())["classifier_keys"]
    state = load_file(folder / "model.safetensors")
    state[bias_key] = np.full_like(state[bias_key], np.nan)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def setter(dotted: str, value) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        *parents, last = dotted.split(".")
        for part in parents:
            config = config.setdefault(part, {})
        config[last] = value

    return edit


def an_image(exported_model) -> Path:
    return sorted(exported_model.data.rglob("*.png"))[0]


def readiness(client: TestClient):
    answer = client.get("/readyz")
    while answer.json()["status"] == "loading":  # the model loads in a background thread
        time.sleep(0.01)
        answer = client.get("/readyz")
    return answer


def upload(client: TestClient, picture_bytes: bytes, name: str = "x.png"):
    return client.post("/v1/predict", files=[("files", (name, picture_bytes, "image/png"))])


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# --- every number is range-checked at load ------------------------------------------------------------------

OUT_OF_RANGE = [
    ("temperature", 1e-308, r"temperature 1e-308 must be a positive number between 0.01 and 100"),
    ("temperature", 1e308, r"temperature 1e\+308 must be a positive number between 0.01 and 100"),
    ("temperature", float("inf"), r"temperature inf must be a positive number"),
    ("temperature", 1000.0, r"temperature 1000.0 must be a positive number between 0.01 and 100"),
    ("preprocessing.std", [1e-45, 0.5, 0.5], r"preprocessing std \[1e-45, 0.5, 0.5\] must be three positive numbers"),
    ("preprocessing.std", [1e6, 0.5, 0.5], r"std \[1000000.0, 0.5, 0.5\] must be .* between 0.001 and 10"),
    ("preprocessing.mean", [1e308, 0.5, 0.5], r"mean \[1e\+308, 0.5, 0.5\] must be three numbers between -10"),
    ("preprocessing.mean", [-11.0, 0.5, 0.5], r"preprocessing mean \[-11.0, 0.5, 0.5\] must be"),
    ("preprocessing.mean", [float("nan"), 0.5, 0.5], r"crop_pct, mean and std must be finite numbers"),
    ("preprocessing.crop_pct", 1e308, r"crop_pct 1e\+308 must be between 0.25 and 2.0"),
    ("preprocessing.input_size", [160.0, 160], r"input_size \[160.0, 160\] must be \(height, width\) in whole pixels"),
    ("preprocessing.input_size", [1e308, 160], r"input_size \[1e\+308, 160\] must be"),
    ("embedding_dim", 0, r"embedding_dim 0 must be between 1 and"),
    ("embedding_dim", -3, r"embedding_dim -3 must be between 1 and"),
    ("reject", {"score": "confidence", "threshold": 5.0}, r"reject threshold 5.0 must be .* between 0 and 1"),
    ("reject", {"score": "confidence", "threshold": -1e308}, r"reject threshold -1e\+308 must be"),
    ("reject", {"score": "knn", "threshold": 3.0}, r"reject threshold 3.0 must be .* between -1 and 1 .*knn score"),
    ("reject", {"score": "confidence", "threshold": 0.5, "target": {"accuracy": 95}}, r"reject target .* between 0"),
    ("metrics", {"test": {"accuracy": float("nan")}}, r"metrics 'test' 'accuracy' is nan, not a number"),
    ("metrics", {"val": {"ece": float("inf")}}, r"metrics 'val' 'ece' is inf, not a number"),
]


@pytest.mark.parametrize("field, value, message", OUT_OF_RANGE)
def test_a_number_out_of_its_range_is_refused_at_load_naming_the_file_and_the_field(
    exported_model, tmp_path, field, value, message
):
    folder = edited_model_dir(exported_model, tmp_path, setter(field, value))
    with pytest.raises(ModelFileError, match=message) as refused:
        tlearn.load(folder)
    assert str(refused.value).startswith(f"{folder / 'config.json'}: ") and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", 1e-308),
        ("preprocessing.std", [1e-45, 0.5, 0.5]),
        ("preprocessing.mean", [1e308, 0.5, 0.5]),
    ],
)
def test_predict_and_evaluate_refuse_a_poisoned_config_with_one_line_and_exit_code_2(
    exported_model, tmp_path, capsys, field, value
):
    folder = edited_model_dir(exported_model, tmp_path, setter(field, value))
    name = field.rsplit(".", 1)[-1]
    code, out, err = run_cli(capsys, "predict", folder, an_image(exported_model), "--format", "json")
    assert (code, out) == (2, "") and err.count("\n") == 1, (code, out, err)
    assert err.startswith(f"error: {folder / 'config.json'}: ") and f"{name} " in err
    code, out, err = run_cli(capsys, "evaluate", folder, exported_model.data, "-q")
    assert code == 2 and "NaN" not in out and err.count("\n") == 1 and f"{name} " in err, (code, out, err)


def test_an_onnx_file_with_out_of_range_metadata_is_refused(exported_model, tmp_path):
    path = edited_onnx(exported_model, tmp_path, setter("preprocessing.std", [1e-45, 0.5, 0.5]))
    with pytest.raises(ModelFileError, match=r"\(metadata tlearn_config\): preprocessing std \[1e-45"):
        load_engine(path)


def test_the_service_is_not_ready_with_a_poisoned_config_and_never_answers_with_nulls(exported_model, tmp_path):
    folder = edited_model_dir(exported_model, tmp_path, setter("temperature", 1e-308))
    with TestClient(create_app(lambda: load_engine(folder)), base_url=LOCAL) as client:
        ready = readiness(client)
        assert ready.status_code == 503 and "temperature 1e-308" in ready.json()["error"]
        answer = upload(client, png_bytes(colour_image((220, 30, 30), size=64)))
        assert answer.status_code == 503 and "temperature 1e-308" in answer.text and "null" not in answer.text


def test_values_at_the_edges_of_the_ranges_still_load(exported_model, tmp_path):
    def edit(config: dict) -> None:
        config["temperature"] = 0.01
        config["preprocessing"]["mean"] = [-10.0, 0.0, 10.0]
        config["preprocessing"]["std"] = [0.001, 1.0, 10.0]
        config["reject"] = {"score": "confidence", "threshold": 1.0, "target": {"accuracy": 1.0}}

    model = tlearn.load(edited_model_dir(exported_model, tmp_path, edit))
    assert model.config.temperature == 0.01 and model.preprocessing.std == (0.001, 1.0, 10.0)


# --- arch names only timm's registry: no download, no read outside the model folder ---------------------------

INDIRECT_ARCHES = [
    "hf-hub:timm/test_efficientnet.r160_in1k",
    "hf_hub:timm/test_efficientnet",
    "local-dir:/etc",
    "local-dir:..",
    "/etc/passwd",
    "../model",
    "timm/test_efficientnet",
    "test_efficientnet ",
]


@pytest.fixture
def no_timm_build(monkeypatch) -> list[str]:
    """timm.create_model made to record its calls and fail: a refused arch never reaches it."""
    calls: list[str] = []

    def refuse(name, *args, **kwargs):
        calls.append(name)
        raise AssertionError(f"timm.create_model({name!r}) was called")

    monkeypatch.setattr(timm, "create_model", refuse)
    return calls


@pytest.mark.parametrize("arch", INDIRECT_ARCHES)
def test_an_arch_that_names_a_hub_or_a_path_is_refused_before_timm_sees_it(
    exported_model, tmp_path, no_timm_build, arch
):
    folder = edited_model_dir(exported_model, tmp_path, setter("arch", arch))
    with pytest.raises(ModelFileError, match=r"arch .* is not a timm architecture name") as refused:
        tlearn.load(folder)
    assert str(refused.value).startswith(f"{folder / 'config.json'}: ") and "\n" not in str(refused.value)
    assert no_timm_build == []


def test_predict_with_a_hub_arch_exits_2_without_building_anything(exported_model, tmp_path, capsys, no_timm_build):
    folder = edited_model_dir(exported_model, tmp_path, setter("arch", "hf-hub:timm/test_efficientnet.r160_in1k"))
    code, out, err = run_cli(capsys, "predict", folder, an_image(exported_model))
    assert (code, out) == (2, "") and err.count("\n") == 1 and "'hf-hub:timm/" in err and "arch" in err
    assert no_timm_build == []


def test_an_onnx_file_whose_metadata_names_a_local_dir_arch_is_refused(exported_model, tmp_path):
    path = edited_onnx(exported_model, tmp_path, setter("arch", "local-dir:/etc"))
    with pytest.raises(ModelFileError, match=r"\(metadata tlearn_config\): arch 'local-dir:/etc' is not a timm"):
        load_engine(path)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("no_such_network", r"arch 'no_such_network' is not an architecture of timm"),
        ("test_efficientnet.no_such_tag", r"arch 'test_efficientnet.no_such_tag' cannot be built by timm"),
    ],
)
def test_an_arch_timm_does_not_know_is_one_line_not_a_traceback(exported_model, tmp_path, arch, message):
    folder = edited_model_dir(exported_model, tmp_path, setter("arch", arch))
    with pytest.raises(ModelFileError, match=message) as refused:
        tlearn.load(folder)
    assert str(refused.value).startswith(f"{folder / 'config.json'}: ") and "\n" not in str(refused.value)


# --- format versions this tlearn does not read ----------------------------------------------------------------


def test_a_newer_format_version_is_refused_with_the_advice_to_upgrade(exported_model, tmp_path, capsys):
    def newer(config: dict) -> None:
        config.update(format_version=99, tlearn_version="7.3.0")
        config["architecture"] = config.pop("arch")  # a newer format may rename fields: still "upgrade"

    folder = edited_model_dir(exported_model, tmp_path, newer)
    with pytest.raises(ModelFileError) as refused:
        tlearn.load(folder)
    message = str(refused.value)
    assert message.startswith(f"{folder / 'config.json'}: model format version 99 (written by tlearn '7.3.0')")
    assert f"this tlearn {tlearn.__version__} reads format version 1" in message
    assert "upgrade tlearn (pip install -U tlearn) to a release that reads format version 99" in message
    assert "\n" not in message
    code, out, err = run_cli(capsys, "predict", folder, an_image(exported_model))
    assert (code, out) == (2, "") and err.count("\n") == 1 and "format version 99" in err


@pytest.mark.parametrize(
    "version, message", [(2, r"format version 2 \(written by .*\) is newer"), (0, r"format version 0 is not a")]
)
def test_format_versions_other_than_this_one_are_refused(exported_model, tmp_path, version, message):
    folder = edited_model_dir(exported_model, tmp_path, setter("format_version", version))
    with pytest.raises(ModelFileError, match=message):
        tlearn.load(folder)
    path = edited_onnx(exported_model, tmp_path, setter("format_version", version))
    with pytest.raises(ModelFileError, match=r"\(metadata tlearn_config\): model " + message):
        load_engine(path)


# --- the second line of defence: outputs that are not finite are an error, wherever they come from ---------------


def test_nan_probabilities_are_an_error_for_the_api_predict_and_evaluate(exported_model, tmp_path, capsys):
    folder = nan_weights(exported_model, tmp_path)  # config.json is valid: only the outputs can tell
    with pytest.raises(ModelOutputError, match=r"probabilities that are not finite \(NaN or infinity\) for 1 of 1"):
        tlearn.load(folder).predict([an_image(exported_model)])
    code, out, err = run_cli(capsys, "predict", folder, an_image(exported_model), "--format", "json")
    assert code == 2 and "NaN" not in out and "null" not in out and err.endswith("\n"), (code, out, err)
    assert err.splitlines()[-1].startswith(f"error: {folder}: the model gave probabilities that are not finite")
    code, out, err = run_cli(capsys, "evaluate", folder, exported_model.data, "-q")
    assert code == 2 and "NaN" not in out and "not finite" in err and err.count("\n") == 1, (code, out, err)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NumPy on the way to NaN
def test_a_config_that_slipped_through_the_load_checks_still_never_prints_nan(
    exported_model, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(model_dir, "check_model_config", lambda config, where: None)  # the first line gone
    folder = edited_model_dir(exported_model, tmp_path, setter("temperature", 1e-308))
    code, out, err = run_cli(capsys, "predict", folder, an_image(exported_model), "--format", "json")
    assert code == 2 and "NaN" not in out and "not finite" in err, (code, out, err)


def test_the_service_is_not_ready_with_a_model_that_gives_nan(exported_model, tmp_path):
    folder = nan_weights(exported_model, tmp_path)
    with TestClient(create_app(lambda: load_engine(folder)), base_url=LOCAL) as client:
        ready = readiness(client)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "ModelOutputError" in ready.json()["error"] and "not finite" in ready.json()["error"]
        answer = upload(client, png_bytes(colour_image((220, 30, 30), size=64)))
        assert answer.status_code == 503 and "not finite" in answer.text and "null" not in answer.text


def test_images_that_make_the_model_give_nan_are_422_and_the_service_stays_ready(exported_model, tmp_path):
    engine = load_engine(edited_model_dir(exported_model, tmp_path, lambda config: None))
    forward = engine._forward

    def nan_on_white(pixels: np.ndarray, *, embeddings: bool = False):  # overflow on bright images only
        probabilities, features = forward(pixels, embeddings=embeddings)
        probabilities[pixels.reshape(len(pixels), -1).mean(axis=1) > 200] = np.nan
        return probabilities, features

    engine._forward = nan_on_white
    white = png_bytes(colour_image((255, 255, 255), size=64).point(lambda _: 255))
    red = png_bytes(colour_image((220, 30, 30), size=64))
    with TestClient(create_app(lambda: engine, ServeSettings()), base_url=LOCAL) as client:
        assert readiness(client).status_code == 200
        answer = upload(client, white, "white.png")
        assert answer.status_code == 422 and "not finite" in answer.json()["detail"], answer.text
        assert str(tmp_path) not in answer.text
        assert readiness(client).status_code == 200
        answer = upload(client, red, "red.png")
        assert answer.status_code == 200 and answer.json()["predictions"][0]["labels"][0] == "red"


# --- a refused decompression bomb names tlearn's limit, not Pillow's ---------------------------------------------


def test_an_image_over_pillows_own_limit_names_tlearns_limit(exported_model, tmp_path, capsys):
    bomb = png_with_size(20_000, 10_000)  # 200 MP: Pillow refuses to open it (its limit is 179 MP)
    with pytest.raises(ImageTooLargeError) as refused:
        load_rgb(bomb, max_pixels=40_000_000)
    assert "200,000,000 > limit 40,000,000" in str(refused.value) and "178956970" not in str(refused.value)
    (tmp_path / "bomb.png").write_bytes(bomb)
    code, out, _ = run_cli(capsys, "predict", exported_model.run, tmp_path / "bomb.png", "--format", "json")
    [answer] = json.loads(out)
    assert code == 1 and "> limit 89,478,485" in answer["error"] and "178956970" not in answer["error"]
    with TestClient(create_app(lambda: load_engine(exported_model.onnx)), base_url=LOCAL) as client:
        assert readiness(client).status_code == 200
        answer = upload(client, bomb, "bomb.png")
        assert answer.status_code == 413 and "> limit 40,000,000" in answer.text and "178956970" not in answer.text
