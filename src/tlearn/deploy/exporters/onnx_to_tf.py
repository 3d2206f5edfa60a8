"""The fp32 ONNX probability graph rebuilt as TensorFlow operations in channels-last layout, for the TFLite
converter (imports tensorflow when a graph is built).

Our own code, for a measured reason: the maintained routes from PyTorch or ONNX to TFLite cannot be installed
beside tlearn's dependencies (checked 2026-12-07: `litert-torch` 0.10 and `litert-converter` 0.5 pin
`xdsl==0.28.0`, hence `typing-extensions < 4.13` and an older pydantic; `onnx2tf` 1.29 pins numpy 1.26, onnx
1.19, onnxruntime 1.23 and tensorflow 2.19 exactly), while `tensorflow-cpu` itself installs beside them. The
graphs tlearn exports from its CNN backbones use a dozen ONNX operations (EfficientNet-Lite0:
Conv, Clip, Add, ReduceMean, Reshape, Gemm, Softmax); each is mapped here to its TensorFlow operation, with
activations kept channels-last (TFLite's layout: NHWC input, no transposes inside the graph). An operation
outside the table, or a layout it cannot follow (a reshape of a feature map wider than 1 x 1, grouped
convolutions other than depthwise), is refused in one line naming it, so a model this cannot convert is said
so, never converted wrong; the export's check against PyTorch is the final word either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tlearn.errors import ExportError

_NCHW_TO_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


@dataclass
class _Value:
    """A tensor while the graph is rebuilt: a TensorFlow tensor (`channels_last` when it is a 4-D feature
    map, which ONNX holds as NCHW) or a constant still in numpy."""

    tensor: Any
    channels_last: bool = False

    @property
    def constant(self) -> bool:
        return isinstance(self.tensor, np.ndarray)


class OnnxToTf:
    """Builds the TensorFlow function of an ONNX graph whose 4-D tensors become NHWC.

    Example:
        >>> OnnxToTf.supported()[:4]
        ('Add', 'Cast', 'Clip', 'Concat')
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.graph = proto.graph
        self.constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in self.graph.initializer}
        inputs = [value for value in self.graph.input if value.name not in self.constants]
        if len(inputs) != 1:
            raise ExportError(f"TFLite export: the graph has {len(inputs)} inputs; expected one image batch")
        self.input_name = inputs[0].name
        self.output_names = [value.name for value in self.graph.output]
        unsupported = sorted({node.op_type for node in self.graph.node} - set(self.supported()))
        if unsupported:
            raise ExportError(
                f"TFLite export: this model uses ONNX operations the converter does not map "
                f"({', '.join(unsupported)}); try --format onnx"
            )

    @staticmethod
    def supported() -> tuple[str, ...]:
        """The ONNX operation types the converter maps."""
        return tuple(sorted(_OPS))

    def __call__(self, images: Any) -> list[Any]:
        """The graph's outputs for an NHWC float32 batch (called inside a `tf.function` while it traces)."""
        outputs = self.values(images)
        if any(value.channels_last for value in outputs):
            raise ExportError("TFLite export: an output is a feature map; expected (batch, classes)")
        return [value.tensor for value in outputs]

    def values(self, images: Any) -> list[_Value]:
        """The graph's outputs, each with its layout (a 4-D output comes out channels-last)."""
        values: dict[str, _Value] = {name: _Value(array) for name, array in self.constants.items()}
        values[self.input_name] = _Value(images, channels_last=True)
        for node in self.graph.node:
            inputs = [values[name] if name else None for name in node.input]
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            try:
                outputs = _OPS[node.op_type](inputs, attributes)
            except ExportError as error:
                raise ExportError(f"TFLite export: {node.op_type} node {node.name!r}: {error}") from None
            for name, value in zip(node.output, outputs if isinstance(outputs, list) else [outputs], strict=False):
                values[name] = value
        return [values[name] for name in self.output_names]


def _tf() -> Any:
    import tensorflow as tf

    return tf


def _as_tensor(value: _Value) -> Any:
    return _tf().constant(value.tensor) if value.constant else value.tensor


def _aligned(constant: np.ndarray, other: _Value) -> np.ndarray:
    """A constant operand laid out like the feature map it meets: ONNX's (1, C, 1, 1) or (C, 1, 1) becomes
    (1, 1, 1, C) or (1, 1, C); scalars and operands of flat tensors stay as they are."""
    if not other.channels_last or constant.ndim < 3:
        if other.channels_last and constant.ndim >= 1 and constant.size > 1:
            raise ExportError(f"a constant of shape {constant.shape} broadcast against a feature map")
        return constant
    return np.moveaxis(constant, -3, -1)


def _binary(operation: Callable[[Any, Any], Any]) -> Callable[[list[_Value], dict[str, Any]], _Value]:
    def convert(inputs: list[_Value], _: dict[str, Any]) -> _Value:
        left, right = inputs
        if left.constant and right.constant:
            return _Value(np.asarray(operation(left.tensor, right.tensor)))
        if left.constant:
            left = _Value(_aligned(left.tensor, right).astype(np.float32))
        if right.constant:
            right = _Value(_aligned(right.tensor, left).astype(np.float32))
        if not (left.constant or right.constant) and left.channels_last != right.channels_last:
            raise ExportError("a feature map meets a flat tensor")
        return _Value(operation(_as_tensor(left), _as_tensor(right)), left.channels_last or right.channels_last)

    return convert


def _conv(inputs: list[_Value], attributes: dict[str, Any]) -> _Value:
    tf = _tf()
    x, weight = inputs[0], inputs[1].tensor.astype(np.float32)  # weight: (O, I / groups, kh, kw)
    bias = inputs[2].tensor.astype(np.float32) if len(inputs) > 2 and inputs[2] is not None else None
    if weight.ndim != 4 or not x.channels_last:
        raise ExportError("only 2-D convolutions of feature maps are mapped")
    groups = attributes.get("group", 1)
    top, left, bottom, right = attributes.get("pads", [0, 0, 0, 0])
    strides = [1, *attributes.get("strides", [1, 1]), 1]
    dilations = list(attributes.get("dilations", [1, 1]))
    if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExportError("auto_pad is not mapped (the exporter writes explicit pads)")
    tensor = x.tensor
    if top or left or bottom or right:
        tensor = tf.pad(tensor, [[0, 0], [top, bottom], [left, right], [0, 0]])
    out_channels, in_per_group = weight.shape[:2]
    if groups == 1:
        tensor = tf.nn.conv2d(tensor, weight.transpose(2, 3, 1, 0), strides, "VALID", dilations=dilations)
    elif in_per_group == 1 and out_channels % groups == 0:  # depthwise, `out / groups` outputs per channel
        multiplier = out_channels // groups
        kernel = weight.reshape(groups, multiplier, *weight.shape[2:]).transpose(2, 3, 0, 1)
        tensor = tf.nn.depthwise_conv2d(tensor, kernel, strides, "VALID", dilations=dilations)
    else:
        raise ExportError(f"grouped convolutions ({groups} groups of {in_per_group} channels) are not mapped")
    if bias is not None:
        tensor = tf.nn.bias_add(tensor, bias)
    return _Value(tensor, channels_last=True)


def _clip(inputs: list[_Value], attributes: dict[str, Any]) -> _Value:
    tf = _tf()
    low = float(inputs[1].tensor) if len(inputs) > 1 and inputs[1] is not None else attributes.get("min")
    high = float(inputs[2].tensor) if len(inputs) > 2 and inputs[2] is not None else attributes.get("max")
    tensor = inputs[0].tensor
    if low == 0.0 and high == 6.0:
        tensor = tf.nn.relu6(tensor)  # one fused TFLite activation instead of a minimum and a maximum
    else:
        tensor = tensor if low is None else tf.maximum(tensor, low)
        tensor = tensor if high is None else tf.minimum(tensor, high)
    return _Value(tensor, inputs[0].channels_last)


def _reduce_mean(inputs: list[_Value], attributes: dict[str, Any]) -> _Value:
    x = inputs[0]
    axes = attributes.get("axes")
    if axes is None and len(inputs) > 1 and inputs[1] is not None:
        axes = inputs[1].tensor.tolist()
    if axes is None:
        raise ExportError("a mean over every axis is not mapped")
    keep = bool(attributes.get("keepdims", 1))
    rank = 4 if x.channels_last else len(x.tensor.shape)
    axes = [axis % rank for axis in axes]
    if x.channels_last:
        if not keep and sorted(axes) != [2, 3]:
            raise ExportError(f"a mean over axes {axes} of a feature map without keepdims is not mapped")
        axes = [_NCHW_TO_NHWC_AXIS[axis] for axis in axes]
    tensor = _tf().reduce_mean(x.tensor, axis=axes, keepdims=keep)
    return _Value(tensor, x.channels_last and keep)


def _global_average_pool(inputs: list[_Value], _: dict[str, Any]) -> _Value:
    return _Value(_tf().reduce_mean(inputs[0].tensor, axis=[1, 2], keepdims=True), channels_last=True)


def _flat(x: _Value) -> Any:
    """A (N, 1, 1, C) feature map as (N, C): the same values in NCHW and NHWC order."""
    shape = x.tensor.shape
    if shape[1] != 1 or shape[2] != 1:
        raise ExportError(f"a feature map of {shape[1]} x {shape[2]} flattened (only 1 x 1 keeps its order)")
    return _tf().reshape(x.tensor, [-1, shape[3]])


def _reshape(inputs: list[_Value], _: dict[str, Any]) -> _Value:
    x, shape = inputs[0], inputs[1].tensor.tolist()
    if x.channels_last:
        if len(shape) != 2:
            raise ExportError(f"a feature map reshaped to {shape}")
        return _Value(_flat(x))
    return _Value(_tf().reshape(x.tensor, shape))


def _flatten(inputs: list[_Value], attributes: dict[str, Any]) -> _Value:
    x = inputs[0]
    if attributes.get("axis", 1) != 1:
        raise ExportError("only Flatten(axis=1) is mapped")
    return _Value(_flat(x) if x.channels_last else _tf().reshape(x.tensor, [-1, int(np.prod(x.tensor.shape[1:]))]))


def _gemm(inputs: list[_Value], attributes: dict[str, Any]) -> _Value:
    tf = _tf()
    a, b = inputs[0], inputs[1]
    if a.channels_last or not b.constant or attributes.get("transA", 0):
        raise ExportError("only flat inputs times a constant matrix are mapped")
    matrix = b.tensor.astype(np.float32)
    matrix = matrix.T if attributes.get("transB", 0) else matrix
    tensor = tf.matmul(a.tensor, matrix * np.float32(attributes.get("alpha", 1.0)))
    if len(inputs) > 2 and inputs[2] is not None:
        tensor = tensor + inputs[2].tensor.astype(np.float32) * np.float32(attributes.get("beta", 1.0))
    return _Value(tensor)


def _matmul(inputs: list[_Value], _: dict[str, Any]) -> _Value:
    return _gemm(inputs, {})


def _softmax(inputs: list[_Value], attributes: dict[str, Any]) -> _Value:
    x = inputs[0]
    if x.channels_last or attributes.get("axis", -1) not in (-1, len(x.tensor.shape) - 1):
        raise ExportError("only a softmax over the last axis of a flat tensor is mapped")
    return _Value(_tf().nn.softmax(x.tensor, axis=-1))


def _unary(operation: Callable[[Any], Any]) -> Callable[[list[_Value], dict[str, Any]], _Value]:
    return lambda inputs, _: _Value(operation(inputs[0].tensor), inputs[0].channels_last)


def _concat(inputs: list[_Value], attributes: dict[str, Any]) -> _Value:
    if any(value.channels_last for value in inputs):
        raise ExportError("concatenated feature maps are not mapped")
    return _Value(_tf().concat([_as_tensor(value) for value in inputs], axis=attributes["axis"]))


def _cast(inputs: list[_Value], _: dict[str, Any]) -> _Value:
    if not inputs[0].constant:
        raise ExportError("casts of computed tensors are not mapped")
    return inputs[0]


def _constant(_: list[_Value], attributes: dict[str, Any]) -> _Value:
    if "value" not in attributes:
        raise ExportError("only tensor constants are mapped")
    return _Value(numpy_helper.to_array(attributes["value"]))


_OPS: dict[str, Callable[[list[_Value], dict[str, Any]], _Value]] = {
    "Add": _binary(lambda a, b: a + b),
    "Sub": _binary(lambda a, b: a - b),
    "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(lambda a, b: a / b),
    "Conv": _conv,
    "Clip": _clip,
    "Relu": _unary(lambda x: _tf().nn.relu(x)),
    "Sigmoid": _unary(lambda x: _tf().sigmoid(x)),
    "Identity": _unary(lambda x: x),
    "ReduceMean": _reduce_mean,
    "GlobalAveragePool": _global_average_pool,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Softmax": _softmax,
    "Concat": _concat,
    "Cast": _cast,
    "Constant": _constant,
}
