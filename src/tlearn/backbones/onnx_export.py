"""Exporting a backbone's embedding graph to ONNX and checking it against PyTorch (imports torch).

The graph is `forward_features` followed by the pre-logits head, with batch norm already folded into the
convolutions (the `Backbone` is built that way), taking normalised float32 (B, 3, H, W) with a dynamic batch
and returning (B, num_features). torch's `torch.export`-based exporter is used, as for `tlearn export`: for
EfficientNet-Lite it turns TensorFlow-style "same" padding into static pads, and its graph ran 25-35% faster
on onnxruntime here than the TorchScript-based exporter's (whose dynamic padding stays as shape arithmetic),
for 10-15 s of export against 1.5-2.5 s here — paid once per backbone. Models it cannot export fall back to the
TorchScript-based exporter; either way the check decides whether the graph is ever used.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from tlearn.backbones.onnx_models import (
    INPUT_NAME,
    MAX_RELATIVE_DIFFERENCE,
    OUTPUT_NAME,
    OnnxBackbone,
    relative_difference,
)
from tlearn.backbones.timm_models import Backbone
from tlearn.util.text import first_line

OPSET = 18


class _EmbeddingGraph(nn.Module):
    """forward_features + pre-logits head: what `Backbone.embed` computes after normalisation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)


def export_dynamic_batch(graph: nn.Module, input_size: tuple[int, int], *, opset: int, names: tuple[str, str]) -> Any:
    """`graph` as an ONNX ModelProto from torch's torch.export-based exporter: the batch dimension is dynamic,
    height and width are fixed at `input_size`; `names` are the (input, output) names. Raises whatever the
    exporter raises (callers decide whether to fall back or to explain)."""
    height, width = input_size
    program = torch.onnx.export(
        graph,
        (torch.zeros(2, 3, height, width),),
        dynamo=True,
        opset_version=opset,
        input_names=[names[0]],
        output_names=[names[1]],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        verbose=False,
    )
    return program.model_proto


def export_embedding_graph(backbone: Backbone) -> tuple[bytes, str]:
    """The backbone's embedding graph as ONNX bytes, and the exporter that made it.

    Raises:
        RuntimeError: neither exporter could export the model (the message holds both reasons).
    """
    graph = _EmbeddingGraph(copy.deepcopy(backbone.model).to(memory_format=torch.contiguous_format)).eval().cpu()
    height, width = backbone.info.preprocessing.input_size
    example = torch.zeros(2, 3, height, width)
    try:
        proto = export_dynamic_batch(graph, (height, width), opset=OPSET, names=(INPUT_NAME, OUTPUT_NAME))
        return proto.SerializeToString(), "torch.export"
    except Exception as error:  # the exporter raises many types; the fallback below gets its chance
        dynamo_failure = f"{type(error).__name__}: {first_line(error)}"
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated and says so
            torch.onnx.export(
                graph,
                (example,),
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as error:
        raise RuntimeError(
            f"torch.export: {dynamo_failure}; torchscript: {type(error).__name__}: {first_line(error)}"
        ) from None
    return buffer.getvalue(), "torchscript"


def check_against_torch(
    onnx_backbone: OnnxBackbone, pixels: np.ndarray, reference: np.ndarray
) -> tuple[bool, dict[str, Any]]:
    """Compare the graph's embeddings with PyTorch's on real images, as a batch and for one image alone.

    Args:
        onnx_backbone: the exported graph in a session.
        pixels: (B, H, W, 3) uint8 preprocessed images.
        reference: PyTorch's embeddings of `pixels`.

    Returns:
        Whether the largest relative difference is within `MAX_RELATIVE_DIFFERENCE`, and the figures.
    """
    batch_difference = relative_difference(onnx_backbone.embed(pixels), reference)
    single_difference = relative_difference(onnx_backbone.embed(pixels[:1]), reference[:1])
    difference = max(batch_difference, single_difference)
    figures = {
        "images": len(pixels),
        "max_relative_difference": difference,
        "limit": MAX_RELATIVE_DIFFERENCE,
        "torch": torch.__version__,
    }
    return difference <= MAX_RELATIVE_DIFFERENCE, figures
