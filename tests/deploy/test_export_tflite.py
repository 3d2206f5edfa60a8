"""`--format tflite`: a flatbuffer checked against PyTorch, channels-last as its JSON says, written with its JSON
or not at all; the ONNX-to-TensorFlow mapping operation by operation against onnxruntime."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tlearn
from answer_models import answer_models
from helpers import run_cli
from tlearn.data.preprocess import normalize
from tlearn.deploy.export import ExportLimits
from tlearn.deploy.exporters.onnx_to_tf import OnnxToTf
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.runs.model_dir import REFERENCES_FILE
from tlearn.util import atomic

# TensorFlow is imported by the tests that use it, not when the suite is collected (it takes seconds)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason='TensorFlow is an optional extra: pip install "tlearn[tflite]"',
)


def _tensorflow():
    import tensorflow

    return tensorflow


def interpreter_runner(content: bytes):
    tf = _tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_content=content).get_signature_runner()


def test_tflite_export_is_verified_described_by_its_json_and_runs_channels_last_like_pytorch(
    exported_model, tmp_path, capfd
):
    result = tlearn.export(exported_model.run, tmp_path / "shapes.tflite", export_format="tflite", quiet=True)
    os.write(2, b"stderr is back\n")
    assert capfd.readouterr().err == "stderr is back\n"  # TensorFlow's native logging kept off the console
    (check,) = result.checks
    assert check.name == "tflite fp32 vs pytorch" and check.passed and check.max_abs_diff <= 1e-4
    assert check.images == 5 and check.image_source == "the run's validation split"
    assert result.size_bytes == sum(path.stat().st_size for path in tmp_path.iterdir())
    description = json.loads((tmp_path / "shapes.json").read_text())
    assert description["config"]["classes"] == ["blue", "red"]
    assert description["export"]["format"] == "tflite" and description["export"]["checks"][0]["passed"]
    assert description["input"].startswith("input: float32 (batch, 160, 160, 3) RGB, channels last")
    reference = Classifier.load(exported_model.run, device="cpu")
    pixels = np.random.default_rng(3).integers(0, 256, (5, 160, 160, 3), dtype=np.uint8)  # any batch size
    images = normalize(pixels, reference.preprocessing).transpose(0, 2, 3, 1)  # as the JSON says: NHWC
    runner = interpreter_runner((tmp_path / "shapes.tflite").read_bytes())
    probabilities = runner(input=np.ascontiguousarray(images))["probabilities"]
    np.testing.assert_allclose(probabilities, reference.probabilities(pixels), atol=1e-4)


@pytest.mark.parametrize("which", ["knn", "multilabel"])
def test_tflite_export_of_knn_and_multilabel_models_checks_their_answers_and_holds_their_references(
    exported_model, tmp_path_factory, tmp_path, which
):
    models = answer_models(exported_model, tmp_path_factory)
    model = getattr(models, which)
    result = tlearn.export(model, tmp_path / f"{which}.tflite", export_format="tflite", check_data=models.data)
    (check,) = result.checks
    assert check.passed and check.answer_agreement == 1.0
    description = json.loads((tmp_path / f"{which}.json").read_text())
    outputs = interpreter_runner((tmp_path / f"{which}.tflite").read_bytes()).get_output_details()
    if which == "knn":
        assert check.max_score_diff <= 1e-3 and sorted(outputs) == ["embeddings", "probabilities"]
        assert base64.b64decode(description["reject_references"]) == (models.knn / REFERENCES_FILE).read_bytes()
    else:
        assert list(outputs) == ["probabilities"] and "reject_references" not in description
        assert description["config"]["task"] == "multilabel"


def _int8_tensors(content: bytes) -> tuple[int, int]:
    """(int8 tensors holding weights, int8 tensors computed while the model runs) in a flatbuffer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = _tensorflow().lite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    weights = computed = 0
    for tensor in interpreter.get_tensor_details():
        if tensor["dtype"] != np.int8:
            continue
        try:
            interpreter.get_tensor(tensor["index"])  # constant buffers are readable before any run
            weights += 1
        except ValueError:
            computed += 1
    return weights, computed


def test_int8_tflite_with_calibration_data_is_integer_throughout_and_agrees_with_fp32(exported_model, tmp_path):
    out = tmp_path / "int8.tflite"
    result = tlearn.export(
        exported_model.run,
        out,
        export_format="tflite",
        int8=True,
        calibration_data=exported_model.data,
        check_data=exported_model.data,
    )
    fp32, int8 = result.checks
    assert fp32.name == "tflite fp32 vs pytorch" and fp32.passed
    assert int8.name == "tflite int8-static vs tflite fp32" and int8.passed and int8.images == 28
    assert int8.limit == "agreement ≥ 99%" and int8.top1_agreement >= 0.99
    assert result.precision == "int8-static" and "activation ranges from 28 calibration images" in result.notes[0]
    weights, computed = _int8_tensors(out.read_bytes())
    assert weights >= 10 and computed >= 10  # activations in int8 too, not only the weights
    description = json.loads((tmp_path / "int8.json").read_text())
    assert description["export"]["precision"] == "int8-static" and len(description["export"]["checks"]) == 2
    fp32 = tlearn.export(exported_model.run, tmp_path / "fp32.tflite", export_format="tflite")
    assert out.stat().st_size < 0.5 * fp32.path.stat().st_size
    pixels = np.random.default_rng(5).integers(0, 256, (3, 160, 160, 3), dtype=np.uint8)
    images = normalize(pixels, Classifier.load(exported_model.run, device="cpu").preprocessing)
    probabilities = interpreter_runner(out.read_bytes())(input=np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
    assert probabilities["probabilities"].dtype == np.float32  # fed and read like the fp32 file


def test_the_console_shows_the_exports_steps_and_none_of_tensorflows_own_lines(exported_model, tmp_path):
    """As a user's terminal sees it: a fresh process, its own stderr (TensorFlow writes to the descriptor)."""
    out, data = tmp_path / "int8.tflite", exported_model.data
    arguments = ["export", exported_model.run, "--out", out, "--format", "tflite", "--int8", "--check-data", data]
    done = subprocess.run(
        [sys.executable, "-m", "tlearn", *map(str, arguments), "--calibration-data", str(data)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and out.is_file()
    assert done.stderr.splitlines() == [
        f"checking on 28 images from {data}",
        "exporting to TensorFlow Lite (fp32, channels-last, dynamic batch)...",
        "quantizing to INT8 (static, calibrated on 28 images)...",
    ]
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
        "check tflite fp32 vs pytorch",
        "check tflite int8-static vs tflite fp32",
        "note",
        "exported",
    ]


def test_int8_tflite_without_calibration_data_quantizes_the_weights_only_and_says_so(exported_model, tmp_path):
    out = tmp_path / "dynamic.tflite"
    result = tlearn.export(exported_model.run, out, export_format="tflite", int8=True)
    assert result.precision == "int8-dynamic" and result.checks[1].name == "tflite int8-dynamic vs tflite fp32"
    assert result.notes == [
        "dynamic range: weights in int8, activations computed in float32 (pass --calibration-data DIR for integer "
        "activations too)"
    ]
    weights, computed = _int8_tensors(out.read_bytes())
    assert weights >= 10 and computed == 0


@pytest.mark.parametrize(
    ("options", "failed"),
    [
        ({"limits": ExportLimits(max_abs_diff=-1.0)}, "tflite fp32 vs pytorch"),
        ({"int8": True, "limits": ExportLimits(min_int8_agreement=1.01)}, "tflite int8-static vs tflite fp32"),
    ],
)
def test_a_failed_tflite_check_writes_neither_file(exported_model, tmp_path, options, failed):
    out = tmp_path / "exports" / "model.tflite"
    out.parent.mkdir()
    data = {"calibration_data": exported_model.data, "check_data": exported_model.data} if options.get("int8") else {}
    with pytest.raises(ExportError, match=rf"export not written: check {failed}: .* FAILED"):
        tlearn.export(exported_model.run, out, export_format="tflite", **data, **options)
    assert list(out.parent.iterdir()) == [] and atomic.leftover_temporaries(out.parent) == []


def test_without_tensorflow_the_export_says_how_to_install_it_in_one_line(
    exported_model, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    code, _, stderr = run_cli(
        capsys, "export", exported_model.run, "--out", tmp_path / "m.tflite", "--format", "tflite"
    )
    assert code == 2 and stderr.strip().splitlines()[-1] == (
        'error: --format tflite needs TensorFlow: pip install "tlearn[tflite]"'
    )
    assert list(tmp_path.iterdir()) == []


# --- the mapping, one operation at a time, against onnxruntime ------------------------------------------------


def _graph(nodes, constants, shape_in, shape_out):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _same_as_onnxruntime(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    tf = _tensorflow()
    (value,) = OnnxToTf(proto).values(tf.constant(np.ascontiguousarray(x.transpose(0, 2, 3, 1))))
    got = value.tensor.numpy()
    assert value.channels_last == (got.ndim == 4)
    if value.channels_last:
        got = got.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("attributes", "weight_shape", "out_channels"),
    [
        ({"pads": [0, 1, 1, 2], "strides": [2, 1]}, (6, 4, 3, 3), 6),  # plain, asymmetric pads, uneven strides
        ({"group": 4, "pads": [1, 1, 1, 1]}, (4, 1, 3, 3), 4),  # depthwise
        ({"group": 4, "dilations": [2, 2]}, (8, 1, 3, 3), 8),  # depthwise, two outputs per channel, dilated
    ],
)
def test_convolutions_map_to_the_same_numbers(attributes, weight_shape, out_channels):
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attributes)
    constants = {"w": RNG.normal(size=weight_shape), "b": RNG.normal(size=(out_channels,))}
    proto = _graph([conv], constants, [2, 4, 9, 10], None)
    _same_as_onnxruntime(proto, RNG.normal(size=(2, 4, 9, 10)).astype(np.float32))


@pytest.mark.parametrize(("low", "high"), [(0.0, 6.0), (-0.5, 0.7)])
def test_clips_map_to_the_same_numbers(low, high):
    """ReLU6 (Clip 0..6, one fused TFLite activation) and any other range."""
    clip = helper.make_node("Clip", ["x", "low", "high"], ["y"])
    proto = _graph([clip], {"low": np.array(low), "high": np.array(high)}, [2, 3, 4, 4], None)
    _same_as_onnxruntime(proto, (RNG.normal(size=(2, 3, 4, 4)) * 8).astype(np.float32))


def test_the_squeeze_excite_and_head_operations_map_to_the_same_numbers():
    """Clip, Sigmoid, Mul by a pooled map, Add of a per-channel constant, mean with and without keepdims,
    Flatten, Gemm, Div by a temperature and Softmax: a small network's tail."""
    nodes = [
        helper.make_node("Clip", ["x", "low", "high"], ["clipped"]),
        helper.make_node("GlobalAveragePool", ["clipped"], ["pooled"]),
        helper.make_node("Sigmoid", ["pooled"], ["gate"]),
        helper.make_node("Mul", ["clipped", "gate"], ["excited"]),
        helper.make_node("Add", ["excited", "shift"], ["shifted"]),
        helper.make_node("ReduceMean", ["shifted"], ["kept"], axes=[2, 3], keepdims=1),
        helper.make_node("Flatten", ["kept"], ["flat"]),
        helper.make_node("ReduceMean", ["shifted"], ["flat_too"], axes=[2, 3], keepdims=0),
        helper.make_node("Sub", ["flat", "flat_too"], ["zero"]),
        helper.make_node("Add", ["flat", "zero"], ["same"]),
        helper.make_node("Gemm", ["same", "weight", "bias"], ["logits"], transB=1),
        helper.make_node("Div", ["logits", "temperature"], ["cooled"]),
        helper.make_node("Softmax", ["cooled"], ["y"], axis=1),
    ]
    constants = {
        "low": np.array(-0.5),
        "high": np.array(0.7),
        "shift": RNG.normal(size=(1, 4, 1, 1)),
        "weight": RNG.normal(size=(3, 4)),
        "bias": RNG.normal(size=(3,)),
        "temperature": np.array(1.7),
    }
    proto = _graph(nodes, constants, [2, 4, 5, 6], [2, 3])
    _same_as_onnxruntime(proto, RNG.normal(size=(2, 4, 5, 6)).astype(np.float32))


@pytest.mark.parametrize(
    ("node", "constants", "reason"),
    [
        (helper.make_node("Tanh", ["x"], ["y"]), {}, r"does not map \(Tanh\); try --format onnx$"),
        (
            helper.make_node("Conv", ["x", "w"], ["y"], group=2),
            {"w": np.ones((4, 2, 1, 1))},
            r"Conv node 'conv': grouped convolutions \(2 groups of 2 channels\) are not mapped$",
        ),
        (
            helper.make_node("Flatten", ["x"], ["y"]),
            {},
            r"Flatten node 'conv': a feature map of 5 x 6 flattened \(only 1 x 1 keeps its order\)$",
        ),
        (
            helper.make_node("Add", ["x", "c"], ["y"]),
            {"c": np.ones(6)},
            r"a constant of shape \(6,\) broadcast against a feature map$",
        ),
    ],
)
def test_what_the_converter_cannot_follow_is_refused_in_one_line_naming_it(node, constants, reason):
    node.name = "conv"
    proto = _graph([node], constants, [2, 4, 5, 6], None)
    with pytest.raises(ExportError, match=r"^TFLite export: .*" + reason):
        OnnxToTf(proto).values(_tensorflow().zeros((2, 5, 6, 4)))


def test_the_exported_onnx_graph_of_the_embedded_backbone_uses_only_mapped_operations(exported_model):
    """The ONNX exporter's graph of the session's model converts (its operations are all in the table)."""
    from tlearn.deploy.exporters.onnx_exporter import onnx_proto
    from tlearn.deploy.graph import probability_graph

    classifier = Classifier.load(exported_model.run, device="cpu")
    proto = onnx_proto(probability_graph(classifier), classifier, 18)
    assert {node.op_type for node in proto.graph.node} <= set(OnnxToTf.supported())
    assert onnx.checker.check_model(proto) is None
