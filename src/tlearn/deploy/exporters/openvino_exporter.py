"""`--format openvino`: the probability graph as OpenVINO IR (`MODEL.xml` + `MODEL.bin`), fp32, for OpenVINO's
CPU (and GPU/NPU) runtimes.

The graph is the ONNX exporter's fp32 graph (`onnx_exporter.onnx_proto`: one torch.export path for both
formats) converted by `openvino.convert_model` and saved with its weights in fp32 (`save_model` would halve
them to fp16 by default, which is a different model than the one checked against PyTorch). The IR describes
itself in its runtime info under `tlearn`: the model's `config.json`, the export's facts and checks, and a "knn"
rule's references (base64 safetensors, as in the ONNX metadata). The check compiles for the CPU the very bytes
that are written (read back from the saved files) and compares with PyTorch like the ONNX export, at f32
inference precision: on CPUs with bf16 units OpenVINO otherwise computes in bf16 (probabilities off by ~1e-2 on
the pools model), so a deployment that wants the checked figures compiles with `INFERENCE_PRECISION_HINT=f32`.

OpenVINO is an optional dependency (`pip install "tlearn[openvino]"`, about 60 MB).
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlearn.data.preprocess import normalize
from tlearn.deploy.exporters.onnx_exporter import onnx_proto
from tlearn.deploy.exporters.registry import Exported, Exporter, register
from tlearn.deploy.verify import CheckSet, Outputs, raise_if_failed
from tlearn.engines.answers import needs_embeddings, reject_scores
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util.progress import Progress
from tlearn.util.text import first_line

if TYPE_CHECKING:
    from torch import nn

    from tlearn.deploy.export import ExportOptions

RT_INFO_ROOT = "tlearn"  # runtime-info section of the IR holding the keys below
CONFIG_KEY, EXPORT_KEY, REFERENCES_KEY = "config", "export", "reject_references"


@register
class OpenVinoExporter(Exporter):
    """OpenVINO IR, fp32: `--out MODEL.xml` also writes `MODEL.bin` (the weights) beside it."""

    name, suffix, companions = "openvino", ".xml", (".bin",)

    def export(self, graph: nn.Module, check_set: CheckSet, options: ExportOptions, progress: Progress) -> Exported:
        openvino = _openvino()
        classifier = check_set.classifier
        progress.info("exporting to OpenVINO IR (fp32, dynamic batch)...")
        with tempfile.TemporaryDirectory(prefix="tlearn-export-") as work:
            onnx_path, xml_path = Path(work) / "fp32.onnx", Path(work) / "model.xml"
            onnx_path.write_bytes(onnx_proto(graph, classifier, options.opset).SerializeToString())
            try:
                model = openvino.convert_model(onnx_path)
            except Exception as error:  # the converter raises its own untyped errors
                raise ExportError(
                    f"OpenVINO cannot convert this model ({first_line(error)}); try --format onnx"
                ) from None
            _describe(model, classifier, self.export_info("fp32"))
            openvino.save_model(model, xml_path, compress_to_fp16=False)
            core = openvino.Core()
            compiled = core.compile_model(core.read_model(xml_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            outputs = check_set.run(lambda pixels: _scored_probabilities(compiled, classifier, pixels))
            checks = [check_set.compare_with_pytorch("openvino fp32 vs pytorch", outputs, options.limits)]
            raise_if_failed(checks)
            checked_weights = xml_path.with_suffix(".bin").read_bytes()
            model.set_rt_info(json.dumps([asdict(check) for check in checks]), [RT_INFO_ROOT, "checks"])
            openvino.save_model(model, xml_path, compress_to_fp16=False)  # the same graph, with its checks
            weights = xml_path.with_suffix(".bin").read_bytes()
            if weights != checked_weights:  # only the runtime info may change after the check
                raise ExportError("export not written: the OpenVINO weights changed after their check")
            return Exported(xml_path.read_bytes(), checks, "fp32", [], {".bin": weights})


def _openvino() -> Any:
    """The openvino module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ExportError('--format openvino needs OpenVINO: pip install "tlearn[openvino]"') from None
    return openvino


def _describe(model: Any, classifier: Classifier, export_info: dict[str, Any]) -> None:
    """Store the model's config, the export's facts and a "knn" rule's references in the IR's runtime info."""
    model.set_rt_info(classifier.config.model_dump_json(), [RT_INFO_ROOT, CONFIG_KEY])
    model.set_rt_info(json.dumps(export_info), [RT_INFO_ROOT, EXPORT_KEY])
    if classifier.references is not None:
        references = base64.b64encode(classifier.references.to_bytes()).decode("ascii")
        model.set_rt_info(references, [RT_INFO_ROOT, REFERENCES_KEY])


def _scored_probabilities(compiled: Any, classifier: Classifier, pixels: np.ndarray) -> Outputs:
    """Probabilities and reject scores of decoded images from the compiled IR (as `scored_probabilities`)."""
    results = compiled(normalize(pixels, classifier.preprocessing))
    probabilities = np.asarray(results[compiled.output(0)])
    rule = classifier.config.reject
    if rule is None:
        return probabilities, None
    embeddings = np.asarray(results[compiled.output(1)]) if needs_embeddings(classifier.config) else None
    return probabilities, reject_scores(rule, probabilities, embeddings, classifier.references)
