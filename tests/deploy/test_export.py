"""Exports agree numerically with PyTorch, describe themselves, and a failed check writes nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import tlearn
from helpers import TINY_BACKBONE, run_cli
from tlearn.cli import main
from tlearn.data.preprocess import normalize
from tlearn.deploy.export import ExportLimits, ExportOptions, export_model
from tlearn.deploy.exporters import Exported, Exporter, onnx_exporter, register, registry
from tlearn.engines.onnx_engine import CONFIG_KEY, EXPORT_KEY, INPUT_NAME, OnnxClassifier
from tlearn.engines.options import PredictOptions
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util import atomic


def test_onnx_export_is_verified_and_self_describing(exported_model):
    result = exported_model.export
    check = result.checks[0]
    assert check.name == "onnx fp32 vs pytorch" and check.passed and check.images == 28
    assert check.max_abs_diff <= 1e-4 and check.top1_agreement == 1.0
    proto = onnx.load(str(exported_model.onnx))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    assert json.loads(metadata["classes"]) == ["blue", "red"]
    assert json.loads(metadata["preprocessing"])["input_size"] == [160, 160]
    assert json.loads(metadata[CONFIG_KEY])["arch"] == TINY_BACKBONE
    assert json.loads(metadata[EXPORT_KEY])["checks"][0]["passed"] is True
    assert max(opset.version for opset in proto.opset_import if opset.domain in ("", "ai.onnx")) >= 17
    batch_dim = next(i for i in proto.graph.input if i.name == INPUT_NAME).type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch


def test_onnx_engine_matches_pytorch_on_any_batch_size(exported_model):
    torch_model = Classifier.load(exported_model.run, device="cpu")
    onnx_model = OnnxClassifier.load(exported_model.onnx)
    assert onnx_model.classes == torch_model.classes and onnx_model.precision == "fp32"
    pixels = np.random.default_rng(1).integers(0, 256, (5, 160, 160, 3), dtype=np.uint8)
    for batch in (pixels[:1], pixels):
        np.testing.assert_allclose(onnx_model.probabilities(batch), torch_model.probabilities(batch), atol=1e-4)


def test_int8_static_export_agrees_with_fp32(capsys, exported_model, tmp_path):
    out = tmp_path / "int8.onnx"
    try:
        main(
            [
                "export",
                str(exported_model.run),
                "--int8",
                "--calibration-data",
                str(exported_model.data),
                "--check-data",
                str(exported_model.data),
                "--out",
                str(out),
                "-q",
            ]
        )
    except SystemExit as stop:
        assert stop.code == 0
    printed = capsys.readouterr().out
    assert "check onnx fp32 vs pytorch: 28 images" in printed and "check onnx int8-static vs onnx fp32" in printed
    assert "FAILED" not in printed and f"exported: {out} (onnx int8-static" in printed
    quantized = OnnxClassifier.load(out)
    assert quantized.precision == "int8-static"
    graph = onnx.load(str(out)).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 10 and any(node.op_type == "DequantizeLinear" for node in graph.node)
    check = quantized.export_info["checks"][1]
    assert check["top1_agreement"] >= 0.99 and check["passed"]
    predictions = quantized.predict(sorted(exported_model.data.rglob("*.png")), PredictOptions(top_k=1))
    assert all(p.label == p.source.split("/")[-2] for p in predictions)


def test_int8_without_calibration_data_is_dynamic_and_says_what_it_covers(exported_model, tmp_path):
    result = tlearn.export(exported_model.run, tmp_path / "dynamic.onnx", int8=True, check_data=exported_model.data)
    assert result.precision == "int8-dynamic" and "MatMul/Gemm" in result.notes[0]
    assert result.checks[1].limit == "agreement ≥ 99%" and result.checks[1].passed
    graph = onnx.load(str(result.path)).graph
    assert any(node.op_type == "DynamicQuantizeLinear" for node in graph.node)
    assert not any(node.op_type == "ConvInteger" for node in graph.node)  # convolutions stay fp32


def test_torchscript_export_round_trips_with_its_config(exported_model, tmp_path):
    result = tlearn.export(exported_model.run, tmp_path / "model.pt", export_format="torchscript")
    check = result.checks[0]
    validation = json.loads((exported_model.run / "splits.json").read_text())["val"]
    assert check.image_source == "the run's validation split" and check.images == len(validation) > 0
    assert check.passed and check.max_abs_diff <= 1e-4
    extra = {"config.json": "", "tlearn_export.json": ""}
    scripted = torch.jit.load(io.BytesIO(result.path.read_bytes()), _extra_files=extra)
    config = json.loads(extra["config.json"])
    reference = Classifier.load(exported_model.run, device="cpu")
    pixels = np.random.default_rng(2).integers(0, 256, (3, 160, 160, 3), dtype=np.uint8)
    with torch.no_grad():
        scripted_probabilities = scripted(torch.from_numpy(normalize(pixels, reference.preprocessing))).numpy()
    np.testing.assert_allclose(scripted_probabilities, reference.probabilities(pixels), atol=1e-4)
    assert config["classes"] == ["blue", "red"]


def test_a_failed_check_is_an_error_and_leaves_no_file(exported_model, tmp_path):
    out = tmp_path / "exports" / "model.pt"
    out.parent.mkdir()
    with pytest.raises(ExportError, match=r"export not written: check torchscript vs pytorch: .* FAILED"):
        tlearn.export(exported_model.run, out, export_format="torchscript", limits=ExportLimits(max_abs_diff=-1.0))
    assert not out.exists() and atomic.leftover_temporaries(out.parent) == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"export_format": "torchscript", "int8": True}, "--format onnx, tflite only"),
        ({"calibration_data": "{tmp}"}, "add --int8"),
        ({"int8": True, "calibration_data": "{tmp}/empty"}, "no image files for calibration"),
        ({"export_format": "keras"}, "unknown export format"),
    ],
)
def test_conflicting_options_are_refused_before_any_work(exported_model, tmp_path, options, message):
    (tmp_path / "empty").mkdir()
    options = {
        key: value.format(tmp=tmp_path) if isinstance(value, str) and "{" in value else value
        for key, value in options.items()
    }
    with pytest.raises(ExportError, match=message):
        tlearn.export(exported_model.run, tmp_path / "out.onnx", **options)
    assert not (tmp_path / "out.onnx").exists()


class _SkewedOnnx:
    """Stands in for `OnnxClassifier` inside the ONNX exporter: the file named `which` answers through `skew`,
    so a check fails for real (the comparison and its limit are the export's own)."""

    def __init__(self, which: str, skew) -> None:
        self.which, self.skew = which, skew

    def load(self, path, **options):
        model = OnnxClassifier.load(path, **options)
        if Path(path).name != self.which:
            return model
        skew = self.skew

        class Skewed:
            def __getattr__(self, name):
                return getattr(model, name)

            def scored_probabilities(self, pixels, **flip):
                probabilities, scores = model.scored_probabilities(pixels, **flip)
                return skew(probabilities), scores

        return Skewed()


@pytest.mark.parametrize(
    "options, which, skew, failed_check",
    [
        ([], "fp32.onnx", lambda p: p + 1e-3, "check onnx fp32 vs pytorch"),  # 1e-3 > the 1e-4 allowed
        (["--int8"], "int8.onnx", lambda p: p[:, ::-1], "check onnx int8-dynamic vs onnx fp32"),  # every answer flips
    ],
)
def test_a_failed_onnx_check_is_one_line_exit_2_and_no_file(
    capsys, monkeypatch, exported_model, tmp_path, options, which, skew, failed_check
):
    monkeypatch.setattr(onnx_exporter, "OnnxClassifier", _SkewedOnnx(which, skew))
    out = tmp_path / "exports" / "model.onnx"
    out.parent.mkdir()
    code, printed, err = run_cli(
        capsys, "export", exported_model.run, "--out", out, "--check-data", exported_model.data, *options, "-q"
    )
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: export not written: {failed_check}: 28 images") and err.rstrip().endswith("FAILED")
    assert "exported:" not in printed and not out.exists() and list(out.parent.iterdir()) == []


@pytest.fixture
def scratch_registry(monkeypatch):
    """The exporter table as it is, in a copy the test may register into (restored afterwards)."""
    monkeypatch.setattr(registry, "_EXPORTERS", dict(registry._EXPORTERS))


class _Throwaway(Exporter):
    """A format no one ships: writes a fixed payload and checks PyTorch against itself."""

    name, suffix = "throwaway", ".bin"

    def __init__(self) -> None:
        self.calls = []

    def export(self, graph, check_set, options, progress):
        self.calls.append((graph, check_set, options))
        check = check_set.compare_with_pytorch("throwaway vs pytorch", check_set.reference, options.limits)
        return Exported(b"throwaway bytes", [check], "fp32", ["a throwaway note"])


def test_the_registry_is_what_picks_the_format(scratch_registry, exported_model, tmp_path):
    register(_Throwaway)
    out = tmp_path / "model.bin"
    result = export_model(
        exported_model.run, out, ExportOptions(export_format="throwaway", check_data=exported_model.data)
    )
    assert out.read_bytes() == b"throwaway bytes" and result.size_bytes == len(b"throwaway bytes")
    assert result.export_format == "throwaway" and result.notes == ["a throwaway note"]
    assert [check.name for check in result.checks] == ["throwaway vs pytorch"] and result.checks[0].images == 28
    [(graph, check_set, options)] = registry.exporter_for("throwaway").calls
    assert isinstance(graph, torch.nn.Module) and check_set.real and options.export_format == "throwaway"


def test_an_unknown_format_lists_the_registered_ones(scratch_registry):
    register(_Throwaway)
    with pytest.raises(
        ExportError,
        match=r"^unknown export format 'keras'; expected one of coreml, onnx, openvino, tflite, torchscript, "
        r"throwaway$",
    ):
        ExportOptions(export_format="keras")


def test_int8_is_offered_by_the_exporters_that_say_they_quantize(scratch_registry):
    with pytest.raises(ExportError, match=r"^--int8 and --calibration-data apply to --format onnx, tflite only$"):
        ExportOptions(export_format="torchscript", int8=True)

    @register
    class Quantizing(_Throwaway):
        name, quantizes = "quantizing", True

    assert ExportOptions(export_format="quantizing", int8=True).int8
    with pytest.raises(ExportError, match=r"apply to --format onnx, tflite, quantizing only$"):
        ExportOptions(export_format="torchscript", calibration_data=Path("data"), int8=True)


def test_two_exporters_cannot_claim_one_format(scratch_registry):
    class Impostor(_Throwaway):
        name = "onnx"

    with pytest.raises(ValueError, match="'onnx' is already registered by OnnxExporter"):
        register(Impostor)
    assert isinstance(registry.exporter_for("onnx"), onnx_exporter.OnnxExporter)
