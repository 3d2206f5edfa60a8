"""`--format openvino`: an IR checked against PyTorch, describing itself, written as .xml + .bin or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tlearn
from helpers import run_cli
from tlearn.data.preprocess import normalize
from tlearn.deploy.export import ExportLimits
from tlearn.deploy.exporters.openvino_exporter import CONFIG_KEY, EXPORT_KEY, RT_INFO_ROOT
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util import atomic

openvino = pytest.importorskip("openvino", reason='OpenVINO is an optional extra: pip install "tlearn[openvino]"')


def compiled_ir(path):
    core = openvino.Core()
    return core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def test_openvino_export_is_verified_self_describing_and_runs_like_pytorch(exported_model, tmp_path):
    result = tlearn.export(exported_model.run, tmp_path / "shapes.xml", export_format="openvino")
    (check,) = result.checks
    assert check.passed and check.max_abs_diff <= 1e-4 and check.images > 0
    assert result.path == tmp_path / "shapes.xml" and (tmp_path / "shapes.bin").is_file()
    assert result.size_bytes == (tmp_path / "shapes.xml").stat().st_size + (tmp_path / "shapes.bin").stat().st_size
    model = openvino.Core().read_model(result.path)
    config = json.loads(model.get_rt_info([RT_INFO_ROOT, CONFIG_KEY]).astype(str))
    export_info = json.loads(model.get_rt_info([RT_INFO_ROOT, EXPORT_KEY]).astype(str))
    assert config["classes"] == ["blue", "red"] and export_info["format"] == "openvino"
    assert export_info["precision"] == "fp32"
    reference = Classifier.load(exported_model.run, device="cpu")
    pixels = np.random.default_rng(3).integers(0, 256, (5, 160, 160, 3), dtype=np.uint8)  # any batch size
    compiled = compiled_ir(result.path)
    probabilities = compiled(normalize(pixels, reference.preprocessing))[compiled.output(0)]
    np.testing.assert_allclose(probabilities, reference.probabilities(pixels), atol=1e-4)


def test_a_failed_openvino_check_writes_neither_file(exported_model, tmp_path):
    out = tmp_path / "exports" / "model.xml"
    out.parent.mkdir()
    with pytest.raises(ExportError, match=r"export not written: check openvino fp32 vs pytorch: .* FAILED"):
        tlearn.export(exported_model.run, out, export_format="openvino", limits=ExportLimits(max_abs_diff=-1.0))
    assert list(out.parent.iterdir()) == [] and atomic.leftover_temporaries(out.parent) == []


def test_an_openvino_file_not_named_xml_is_refused_before_any_work(exported_model, tmp_path, capsys):
    code, _, stderr = run_cli(
        capsys, "export", exported_model.run, "--out", tmp_path / "model.ir", "--format", "openvino"
    )
    assert code == 2
    assert "name it with .xml (e.g. --out model.xml)" in stderr and len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
