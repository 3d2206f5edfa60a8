"""Shipping a model: verified ONNX / INT8 / TorchScript export, and the HTTP service with micro-batching and
its web page."""
