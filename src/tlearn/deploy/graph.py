"""What every export format receives: the whole classifier as one inference graph.

The graph takes normalised float32 (B, 3, H, W) and returns calibrated probabilities: the task's output
function (`Task.torch_probabilities`: a softmax, or one sigmoid per class for a multi-label model) of
logits / temperature. Batch norm is folded into the convolutions first. Every exporter traces this same module,
so the formats cannot disagree on what the model computes.

A "knn" reject rule needs each image's embedding and the training references. The graph gets a second output,
the embeddings (B, D) its classifier reads, and the references travel in the exported file as they are in the
model directory (`reject.safetensors`: base64 in the ONNX metadata, an extra file in TorchScript). The score
itself is computed outside the graph, by the same `tlearn.engines.answers.KnnReferences.similarity` that chose
the threshold at training and that the PyTorch engine runs, rather than as a MatMul + TopK inside the graph
against the references as a constant: the answer then cannot depend on the runtime (onnxruntime's TopK and
matmul order against NumPy's partition), the references keep their float16 storage (an fp32 constant doubles
them: 25 MB at 5000 x 1280), INT8 quantization cannot reach the kNN part (nothing of it is in the graph),
and the file still exposes the embeddings for other uses. Imports torch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tlearn.backbones.fusion import fold_batchnorm
from tlearn.engines.answers import needs_embeddings
from tlearn.engines.torch_engine import Classifier
from tlearn.evaluation.tasks import Task


class _ProbabilityGraph(nn.Module):
    """The classifier with its calibration: (B, 3, H, W) normalised → (B, num_classes) probabilities (the task's:
    a softmax, or a sigmoid per class), and with `embeddings` also the (B, D) features the classifier reads."""

    def __init__(self, model: nn.Module, temperature: float, *, task: Task, embeddings: bool) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.task = task
        self.embeddings = embeddings

    def forward(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.embeddings:
            return self._calibrated(self.model(batch))
        features = self.model.forward_features(batch)
        pre_logits = self.model.forward_head(features, pre_logits=True)  # (B, D)
        return self._calibrated(self.model.forward_head(features)), pre_logits

    def _calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        return self.task.torch_probabilities(logits / self.temperature)


def probability_graph(classifier: Classifier) -> nn.Module:
    """An inference copy of the classifier (batch norm folded) that outputs calibrated probabilities, and the
    embeddings as well for a "knn" reject rule.

    Example:
        >>> graph = probability_graph(Classifier.load("runs/ants", device="cpu"))  # doctest: +SKIP
        >>> graph(torch.zeros(2, 3, 224, 224)).sum(1)  # doctest: +SKIP
        tensor([1.0000, 1.0000])
    """
    model = copy.deepcopy(classifier.model).eval().to(memory_format=torch.contiguous_format)
    fold_batchnorm(model)
    config = classifier.config
    return _ProbabilityGraph(
        model, config.temperature, task=config.task_type, embeddings=needs_embeddings(config)
    ).eval()
