"""Both engines behind one interface: predict, evaluate and the CLI give the same answers on torch and ONNX."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from helpers import PROJECT, run_cli, write_broken_files
from tlearn.engines.loading import load_engine
from tlearn.engines.options import PredictOptions
from tlearn.errors import ModelFileError


def test_engine_is_chosen_by_file_type(exported_model):
    assert load_engine(exported_model.run).engine == "torch"
    assert load_engine(exported_model.onnx).engine == "onnx"
    with pytest.raises(ModelFileError, match=r"needs an \.onnx file"):
        load_engine(exported_model.run, engine="onnx")
    with pytest.raises(ModelFileError, match="runs on the onnx engine"):
        load_engine(exported_model.onnx, engine="torch")
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        load_engine(exported_model.onnx.with_name("missing.onnx"))
    fake = exported_model.onnx.with_name("fake.onnx")
    fake.write_bytes(b"not onnx at all")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        load_engine(fake)
    tensor = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [tensor],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(identity, opset_imports=[onnx.helper.make_opsetid("", 17)]), fake)
    with pytest.raises(ModelFileError, match="without tlearn metadata"):
        load_engine(fake)


def test_both_engines_predict_the_same_for_files_pictures_and_flips(exported_model):
    files = sorted(exported_model.data.rglob("*.png"))[::5]
    engines = [load_engine(exported_model.run, device="cpu"), load_engine(exported_model.onnx)]
    answers = [
        engine.predict([*files, np.zeros((30, 40, 3), dtype=np.uint8)], PredictOptions(top_k=2, workers=0))
        for engine in engines
    ]
    for torch_answer, onnx_answer in zip(*answers, strict=True):
        assert torch_answer.labels == onnx_answer.labels and torch_answer.source == onnx_answer.source
        np.testing.assert_allclose(torch_answer.probabilities, onnx_answer.probabilities, atol=1e-4)
    assert [p.label for p in answers[1][:-1]] == [path.parent.name for path in files]
    pixels = np.random.default_rng(3).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    onnx_engine = engines[1]
    mirrored = (onnx_engine.probabilities(pixels) + onnx_engine.probabilities(pixels[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(onnx_engine.probabilities(pixels, flip=True), mirrored, atol=1e-6)


def test_predict_streams_in_input_order_with_errors_in_place(exported_model, tmp_path):
    broken = tmp_path / "mixed"
    write_broken_files(broken)
    files = sorted(broken.iterdir()) + sorted(exported_model.data.rglob("*.png"))[:3]
    engine = load_engine(exported_model.onnx)
    streamed = engine.iter_file_predictions(files, PredictOptions(top_k=1, batch_size=2, workers=1))
    answers = list(streamed)
    assert [p.source for p in answers] == [str(path) for path in files]
    assert [p.error is not None for p in answers] == [True] * 4 + [False] * 3


def test_cli_predict_and_evaluate_accept_an_onnx_file(capsys, exported_model, tmp_path):
    code, out, _ = run_cli(
        capsys, "predict", exported_model.onnx, exported_model.data / "red", "--format", "json", "-k", "1", "-q"
    )
    answers = json.loads(out)
    assert code == 0 and len(answers) == 14 and {a["labels"][0] for a in answers} == {"red"}
    code, torch_out, _ = run_cli(capsys, "evaluate", exported_model.run, exported_model.data, "-q")
    code_onnx, onnx_out, _ = run_cli(
        capsys,
        "evaluate",
        exported_model.onnx,
        exported_model.data,
        "--engine",
        "onnx",
        "--out",
        tmp_path / "eval",
        "-q",
    )
    assert code == code_onnx == 0 and torch_out.splitlines()[0] == onnx_out.splitlines()[0]
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["model"] == str(exported_model.onnx.resolve())
    code, _, err = run_cli(capsys, "predict", exported_model.run, exported_model.data, "--engine", "onnx")
    assert code == 2 and "needs an .onnx file" in err and err.count("\n") == 1


def test_the_onnx_engine_never_imports_torch(exported_model):
    script = (
        "import sys\n"
        "from tlearn.cli import main\n"
        f"try:\n    main(['predict', {str(exported_model.onnx)!r}, {str(exported_model.data / 'blue')!r}, '-q'])\n"
        "except SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("\tblue") == 14
