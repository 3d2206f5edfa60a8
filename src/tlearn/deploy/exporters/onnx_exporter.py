"""`--format onnx`: the probability graph as a self-describing ONNX file, fp32 or INT8.

The graph is exported with a dynamic batch dimension (height and width fixed) and checked on onnxruntime
against PyTorch; with `--int8` the checked fp32 file is quantized (`int8.quantize`) and the result checked
against fp32 on answers. The file describes itself in its metadata: the model's `config.json` (classes,
preprocessing, backbone, metrics, a multi-label model's thresholds, the reject rule), the export's facts and
checks, a "knn" rule's references (base64 safetensors, see `tlearn.deploy.graph` for why they are not in the
graph) and plain-words descriptions of the input and output, so the file alone says how to feed it and how to
answer. Every file is loaded back by the engine that will serve it (`OnnxClassifier`) for its check.
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from tlearn import __version__
from tlearn.backbones.onnx_export import export_dynamic_batch
from tlearn.data.preprocess import Preprocessing
from tlearn.deploy.exporters.int8 import quantize
from tlearn.deploy.exporters.registry import Exported, Exporter, register
from tlearn.deploy.verify import CheckSet, raise_if_failed
from tlearn.engines.answers import needs_embeddings
from tlearn.engines.onnx_engine import (
    CONFIG_KEY,
    EMBEDDINGS_NAME,
    EXPORT_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    REFERENCES_KEY,
    OnnxClassifier,
)
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from torch import nn

    from tlearn.deploy.export import ExportOptions


@register
class OnnxExporter(Exporter):
    """ONNX (opset `options.opset`), INT8-quantized with `options.int8`."""

    name, suffix, quantizes = "onnx", ".onnx", True

    def export(self, graph: nn.Module, check_set: CheckSet, options: ExportOptions, progress: Progress) -> Exported:
        classifier = check_set.classifier
        opset, limits = options.opset, options.limits
        progress.info(f"exporting to ONNX (opset {opset}, dynamic batch)...")
        with tempfile.TemporaryDirectory(prefix="tlearn-export-") as work:
            fp32_path = Path(work) / "fp32.onnx"
            fp32_proto = onnx_proto(graph, classifier, opset)
            _describe(fp32_proto, classifier, self.export_info("fp32", opset=opset))
            fp32_path.write_bytes(fp32_proto.SerializeToString())
            fp32_outputs = check_set.run(OnnxClassifier.load(fp32_path).scored_probabilities)
            checks = [check_set.compare_with_pytorch("onnx fp32 vs pytorch", fp32_outputs, limits)]
            raise_if_failed(checks)
            final_path, precision, notes = fp32_path, "fp32", []
            if options.int8:
                final_path = Path(work) / "int8.onnx"
                precision, notes = quantize(
                    fp32_path, final_path, check_set.calibration_files, classifier.preprocessing, progress
                )
                int8_outputs = check_set.run(OnnxClassifier.load(final_path).scored_probabilities)
                checks.append(
                    check_set.compare(
                        f"onnx {precision} vs onnx fp32",
                        int8_outputs,
                        reference=fp32_outputs,
                        min_agreement=limits.min_int8_agreement if check_set.real else None,
                    )
                )
                raise_if_failed(checks)
            proto = onnx.load(str(final_path))
        info = self.export_info(precision, opset=opset, checks=[asdict(check) for check in checks])
        _describe(proto, classifier, info)
        return Exported(proto.SerializeToString(), checks, precision, notes)


def onnx_proto(graph: nn.Module, classifier: Classifier, opset: int) -> onnx.ModelProto:
    """The fp32 ONNX graph (torch.export based exporter); batch is dynamic, height and width are fixed. A model
    with a "knn" reject rule has a second output, its embeddings, named `EMBEDDINGS_NAME`."""
    try:
        proto = export_dynamic_batch(
            graph, classifier.preprocessing.input_size, opset=opset, names=(INPUT_NAME, OUTPUT_NAME)
        )
    except Exception as error:  # the exporter raises many types; the user needs the first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"this model cannot be exported to ONNX ({type(error).__name__}: {first}); try --format torchscript"
        ) from None
    if needs_embeddings(classifier.config):
        _name_second_output(proto.graph, EMBEDDINGS_NAME)
    return proto


def _name_second_output(graph: Any, name: str) -> None:
    """Rename the graph's second output (the exporter names it after its last operation) to `name`."""
    old = graph.output[1].name
    for node in graph.node:
        node.input[:] = [name if value == old else value for value in node.input]
        node.output[:] = [name if value == old else value for value in node.output]
    for value in [*graph.output, *graph.value_info]:
        if value.name == old:
            value.name = name


def _describe(proto: onnx.ModelProto, classifier: Classifier, export_info: dict[str, Any]) -> None:
    """Store the model's config, the export's facts, a "knn" rule's references and a plain description of
    input and output in `proto`."""
    config = classifier.config
    output = (
        f"{OUTPUT_NAME}: float32 (batch, {len(classifier.classes)}), {config.task_type.activation}(logits / "
        f"{config.temperature:g}), columns in the order of 'classes'"
    )
    properties = {
        CONFIG_KEY: config.model_dump_json(),
        EXPORT_KEY: json.dumps(export_info),
        "classes": json.dumps(classifier.classes),
        "preprocessing": json.dumps(classifier.preprocessing.to_dict()),
        "input": _input_description(classifier.preprocessing),
        "output": output,
    }
    if config.thresholds is not None:
        properties["output"] += f"; an image's labels are the classes reaching 'thresholds' {config.thresholds}"
    if config.reject is not None:
        properties["output"] += (
            f"; the answer is 'unknown' when the {config.reject.score} score is below {config.reject.threshold:g}"
        )
    if needs_embeddings(config) and classifier.references is not None:
        properties["output"] += (
            f"; {EMBEDDINGS_NAME}: float32 (batch, {config.embedding_dim}), the classifier's input, scored against "
            f"the references in '{REFERENCES_KEY}' (base64 safetensors)"
        )
        properties[REFERENCES_KEY] = base64.b64encode(classifier.references.to_bytes()).decode("ascii")
    onnx.helper.set_model_props(proto, properties)
    proto.producer_name, proto.producer_version = "tlearn", __version__


def _input_description(preprocessing: Preprocessing) -> str:
    height, width = preprocessing.input_size
    return (
        f"{INPUT_NAME}: float32 (batch, 3, {height}, {width}) RGB; resize ({preprocessing.interpolation}, "
        f"crop_pct {preprocessing.crop_pct}, {preprocessing.crop_mode} crop), scale to [0, 1], then "
        f"(x - mean) / std with mean {list(preprocessing.mean)} and std {list(preprocessing.std)}"
    )
