"""Choosing the compute device and its numeric precision (imports torch)."""

from __future__ import annotations

import torch

from tlearn.errors import TlearnError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → the first CUDA GPU when there is one, else the CPU. `cuda:1` style names are accepted.

    Raises:
        TlearnError: a CUDA device was asked for on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TlearnError(f"--device {name}: no CUDA GPU is available on this machine (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TlearnError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision for training on GPU: bf16 where supported, else fp16; None (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
