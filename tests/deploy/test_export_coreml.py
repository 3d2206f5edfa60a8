"""`--format coreml`: a Core ML package with an image input and classifier outputs, describing itself, written
whole or not at all, checked against PyTorch where Core ML runs (macOS; here through a stand-in runtime)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tlearn
from answer_models import answer_models
from helpers import run_cli
from tlearn.deploy.export import ExportLimits
from tlearn.deploy.exporters import coreml_exporter
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util import atomic

coremltools = pytest.importorskip(
    "coremltools", reason='Core ML export is an optional extra: pip install "tlearn[coreml]"'
)


@pytest.fixture(scope="module")
def models(exported_model, tmp_path_factory):
    return answer_models(exported_model, tmp_path_factory)


class StandInRuntime:
    """Core ML's prediction as macOS answers it (a classifier's probabilities by class name), computed by PyTorch
    on the image it is handed, so the export's own check runs here as it runs on a Mac."""

    def __init__(self, model_dir, shift: float = 0.0) -> None:
        self.reference = Classifier.load(model_dir, device="cpu")
        self.shift = shift
        self.images = 0

    def predict(self, inputs):
        self.images += 1
        pixels = np.asarray(inputs[coreml_exporter.IMAGE_INPUT], dtype=np.uint8)[None]
        probabilities = self.reference.probabilities(pixels)[0] + self.shift
        classes = self.reference.config.classes
        if self.reference.config.task == "multiclass":
            return {
                "classLabel": classes[int(probabilities.argmax())],
                "classLabel_probs": dict(zip(classes, probabilities, strict=False)),
            }
        return {coreml_exporter.PROBABILITIES_OUTPUT: probabilities[None]}


def spec_of(package):
    return coremltools.utils.load_spec(str(package))


def test_a_coreml_package_takes_images_answers_classes_and_describes_itself(exported_model, tmp_path):
    result = tlearn.export(exported_model.run, tmp_path / "shapes.mlpackage", export_format="coreml")
    package = tmp_path / "shapes.mlpackage"
    assert result.path == package and (package / "Manifest.json").is_file()
    assert result.size_bytes == sum(path.stat().st_size for path in package.rglob("*") if path.is_file())
    program_check = result.checks[0]  # the captured program fed as Core ML feeds it, on every platform
    assert program_check.name == "coreml input program vs pytorch" and program_check.passed
    assert program_check.max_abs_diff <= 1e-4 and program_check.images > 0
    if not coreml_exporter.runtime_available():
        assert len(result.checks) == 1 and any(
            "not run here: Core ML predicts only on macOS" in n for n in result.notes
        )
    description = spec_of(package).description
    (image,) = description.input
    assert image.name == "image" and image.type.imageType.width == 160 and image.type.imageType.height == 160
    assert image.type.imageType.colorSpace == coremltools.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert [output.name for output in description.output] == ["classLabel", "classLabel_probs"]
    assert description.predictedFeatureName == "classLabel"
    metadata = description.metadata.userDefined
    assert json.loads(metadata["tlearn.config"])["classes"] == ["blue", "red"]
    assert json.loads(metadata["tlearn.export"])["format"] == "coreml"
    assert list(tmp_path.iterdir()) == [package]  # no staging folder left beside it


def test_on_a_mac_the_package_is_checked_against_pytorch_and_a_failed_check_writes_nothing(
    exported_model, tmp_path, monkeypatch
):
    runtime = StandInRuntime(exported_model.run / "model")
    monkeypatch.setattr(coreml_exporter, "runtime_available", lambda: True)
    monkeypatch.setattr(coreml_exporter, "load_package", lambda coremltools, package: runtime)
    result = tlearn.export(exported_model.run, tmp_path / "ok.mlpackage", export_format="coreml")
    _, check = result.checks
    assert check.name == "coreml fp32 vs pytorch" and check.passed and check.images == runtime.images > 0
    assert check.max_abs_diff <= 1e-6 and result.notes == []
    runtime.shift = 0.01  # a runtime that answers otherwise than PyTorch: over the limit, nothing written
    out = tmp_path / "exports" / "bad.mlpackage"
    out.parent.mkdir()
    with pytest.raises(ExportError, match=r"export not written: check coreml fp32 vs pytorch: .* FAILED"):
        tlearn.export(exported_model.run, out, export_format="coreml", limits=ExportLimits(max_abs_diff=1e-3))
    assert list(out.parent.iterdir()) == [] and atomic.leftover_temporaries(out.parent) == []


def test_a_multilabel_package_outputs_its_probabilities_and_a_knn_rule_is_refused(models, tmp_path, monkeypatch):
    runtime = StandInRuntime(models.multilabel)
    monkeypatch.setattr(coreml_exporter, "runtime_available", lambda: True)
    monkeypatch.setattr(coreml_exporter, "load_package", lambda coremltools, package: runtime)
    result = tlearn.export(
        models.multilabel, tmp_path / "tags.mlpackage", export_format="coreml", check_data=models.data
    )
    assert [check.passed for check in result.checks] == [True, True]
    description = spec_of(result.path).description
    assert [output.name for output in description.output] == ["probabilities"] and not description.predictedFeatureName
    assert json.loads(description.metadata.userDefined["tlearn.config"])["thresholds"]
    with pytest.raises(ExportError, match=r'"knn" reject rule .* --format onnx, or train it with --reject confidence'):
        tlearn.export(models.knn, tmp_path / "knn.mlpackage", export_format="coreml")
    assert not (tmp_path / "knn.mlpackage").exists()


def test_the_package_target_is_named_mlpackage_and_replaces_only_an_earlier_package(exported_model, tmp_path, capsys):
    code, _, stderr = run_cli(
        capsys, "export", exported_model.run, "--out", tmp_path / "model.ml", "--format", "coreml"
    )
    assert code == 2 and "writes a .mlpackage folder; name it so" in stderr and len(stderr.strip().splitlines()) == 1
    kept = tmp_path / "notes.mlpackage"
    kept.mkdir()
    (kept / "mine.txt").write_text("a user's file")
    code, _, stderr = run_cli(capsys, "export", exported_model.run, "--out", kept, "--format", "coreml")
    assert code == 2 and "exists and is not a .mlpackage package" in stderr
    assert [path.name for path in kept.iterdir()] == ["mine.txt"]
    earlier = tmp_path / "model.mlpackage"
    code, stdout, stderr = run_cli(capsys, "export", exported_model.run, "--out", earlier, "--format", "coreml")
    assert code == 0 and "check coreml input program vs pytorch" in stdout and f"exported: {earlier}" in stdout
    assert "passes/s" not in stdout + stderr  # coremltools draws a progress bar per conversion pass
    (earlier / "stale.bin").write_bytes(b"left from an earlier export")
    tlearn.export(exported_model.run, earlier, export_format="coreml")
    assert (earlier / "Manifest.json").is_file() and not (earlier / "stale.bin").exists()
    assert atomic.leftover_temporaries(tmp_path) == []
