"""`--format torchscript`: the probability graph traced to TorchScript, fp32 only.

The model's `config.json`, the export's facts (`tlearn_export.json`) and a "knn" rule's references
(`reject.safetensors`, as in the model directory) travel as the file's extra files, so the file alone describes
how to feed it and how to answer. The traced module is saved to bytes, loaded back from those bytes and checked
against PyTorch, so what is checked is what is written.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tlearn.data.preprocess import normalize
from tlearn.deploy.exporters.registry import Exported, Exporter, register
from tlearn.deploy.verify import CheckSet, Outputs, raise_if_failed
from tlearn.engines.answers import REFERENCES_FILE, reject_scores
from tlearn.engines.torch_engine import Classifier
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from tlearn.deploy.export import ExportOptions


@register
class TorchScriptExporter(Exporter):
    """TorchScript by tracing (`torch.jit.trace`) at batch 2; the batch dimension stays free."""

    name, suffix = "torchscript", ".pt"

    def export(self, graph: nn.Module, check_set: CheckSet, options: ExportOptions, progress: Progress) -> Exported:
        classifier = check_set.classifier
        progress.info("tracing to TorchScript...")
        height, width = classifier.preprocessing.input_size
        extra: dict[str, str | bytes] = {
            "config.json": classifier.config.model_dump_json(),
            "tlearn_export.json": json.dumps(self.export_info("fp32")),
        }
        if classifier.references is not None:  # the "knn" rule's references, as in the model directory
            extra[REFERENCES_FILE] = classifier.references.to_bytes()
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            # TorchScript is deprecated upstream and says so on every call; it is still the format asked for here.
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            traced = torch.jit.trace(graph, torch.zeros(2, 3, height, width), check_trace=False)
            torch.jit.save(traced, buffer, _extra_files=extra)
            payload = buffer.getvalue()
            reloaded = torch.jit.load(io.BytesIO(payload), map_location="cpu")
        outputs = check_set.run(lambda pixels: _scored_probabilities(reloaded, classifier, pixels))
        checks = [check_set.compare_with_pytorch("torchscript vs pytorch", outputs, options.limits)]
        raise_if_failed(checks)
        return Exported(payload, checks, "fp32", [])


def _scored_probabilities(module: torch.jit.ScriptModule, classifier: Classifier, pixels: np.ndarray) -> Outputs:
    """The loaded TorchScript module's probabilities and reject scores, as the engines give them."""
    with torch.no_grad():
        outputs = module(torch.from_numpy(normalize(pixels, classifier.preprocessing)))
    probabilities, embeddings = (outputs[0], outputs[1]) if isinstance(outputs, tuple) else (outputs, None)
    probabilities = probabilities.numpy()
    embeddings = None if embeddings is None else embeddings.numpy()
    config = classifier.config
    if config.reject is None:
        return probabilities, None
    return probabilities, reject_scores(config.reject, probabilities, embeddings, classifier.references)
