"""INT8 for the ONNX exporter: onnxruntime's quantization of the verified fp32 ONNX file.

Static (QDQ, per-channel weights, calibrated on real images) with `--calibration-data`; dynamic (MatMul/Gemm
weights only) without, which leaves the convolutions fp32 and says so in a note. In static INT8 the stem
convolution, the classifier and the softmax or sigmoid after it stay fp32 (`sensitive_nodes` says why). The
caller checks the quantized file against the fp32 one on answers (`ExportLimits.min_int8_agreement`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from tlearn.data.preprocess import Preprocessing, normalize
from tlearn.deploy.verify import decode_images
from tlearn.engines.onnx_engine import INPUT_NAME
from tlearn.errors import ExportError
from tlearn.util.progress import Progress

CALIBRATION_BATCH_SIZE = 16


def quantize(
    fp32_path: Path, out_path: Path, calibration_files: list[Path], preprocessing: Preprocessing, progress: Progress
) -> tuple[str, list[str]]:
    """Quantize an fp32 ONNX file to INT8 (static with `calibration_files`, dynamic without).

    Returns:
        (precision, notes): "int8-static" or "int8-dynamic", and what the quantization left in fp32.
    """
    prepared = out_path.with_name("prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    if not calibration_files:
        progress.info("quantizing to INT8 (dynamic: MatMul/Gemm weights; no --calibration-data)...")
        quantize_dynamic(
            str(prepared),
            str(out_path),
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        return "int8-dynamic", [
            "dynamic quantization covers MatMul/Gemm weights only: convolutions stay fp32 "
            "(pass --calibration-data DIR for static INT8 convolutions)"
        ]
    progress.info(f"quantizing to INT8 (static, calibrated on {len(calibration_files)} images)...")
    sensitive = sensitive_nodes(onnx.load(str(prepared)).graph)
    quantize_static(
        str(prepared),
        str(out_path),
        _CalibrationReader(calibration_files, preprocessing),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=sensitive,
    )
    return "int8-static", [
        f"kept in fp32: the stem convolution, the classifier and its softmax or sigmoid ({len(sensitive)} nodes)"
    ]


def sensitive_nodes(graph: Any) -> list[str]:
    """Nodes left in fp32: the first convolution (it sees raw pixels), the last Gemm/MatMul (the classifier),
    every node after it (the temperature, the softmax or a multi-label model's sigmoid) and any Softmax.

    Quantizing these moved EfficientNet-Lite0's probabilities the most for the least speed (measured on
    hymenoptera: top-1 agreement with fp32 98.7% → 99.4%). A sigmoid is chosen by position, not by type: the
    backbone's SiLU activations are sigmoids too.

    Example:
        >>> from onnx import helper
        >>> nodes = [helper.make_node(op, [], [], name=op.lower()) for op in ("Conv", "Sigmoid", "Gemm", "Div")]
        >>> sensitive_nodes(helper.make_graph(nodes, "g", [], []))
        ['conv', 'gemm', 'div']
    """
    nodes = list(graph.node)
    first_conv = next((node.name for node in nodes if node.op_type == "Conv"), None)
    linear = [index for index, node in enumerate(nodes) if node.op_type in ("Gemm", "MatMul")]
    after_classifier = [node.name for node in nodes[linear[-1] :]] if linear else []
    softmax = [node.name for node in nodes if node.op_type == "Softmax"]
    return list(dict.fromkeys(name for name in (first_conv, *after_classifier, *softmax) if name))


class _CalibrationReader(CalibrationDataReader):
    """Feeds onnxruntime's calibration normalised batches of CALIBRATION_BATCH_SIZE images."""

    def __init__(self, files: list[Path], preprocessing: Preprocessing) -> None:
        pixels = decode_images(files, preprocessing)
        if len(pixels) == 0:
            raise ExportError(f"none of the {len(files)} calibration image(s) could be decoded")
        self._batches: Iterator[np.ndarray] = (
            normalize(pixels[start : start + CALIBRATION_BATCH_SIZE], preprocessing)
            for start in range(0, len(pixels), CALIBRATION_BATCH_SIZE)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}
