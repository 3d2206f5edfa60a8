"""Opening a saved model on the engine that fits it: a model directory on PyTorch, an `.onnx` file on
onnxruntime (torch is never imported for those). `check_engine` answers cheaply, before anything loads.
A model named `hf-hub:OWNER/NAME` is downloaded first (`tlearn.runs.hub_models.local_model`) and read like any
model directory.
"""

from __future__ import annotations

from pathlib import Path

from tlearn.engines.base import InferenceEngine
from tlearn.errors import ModelFileError
from tlearn.runs.hub_models import local_model
from tlearn.runs.model_dir import model_folder

ENGINES = ("torch", "onnx")
ONNX_SUFFIX = ".onnx"


def load_engine(path: str | Path, *, engine: str | None = None, device: str = "auto") -> InferenceEngine:
    """Load a model directory (PyTorch) or an exported `.onnx` file (onnxruntime, torch is never imported).

    Args:
        path: a model directory, a run directory holding `model/`, a `.onnx` file from `tlearn export`, or a
            model pushed to the Hub (`hf-hub:OWNER/NAME[@REVISION]`).
        engine: "torch" or "onnx"; by default chosen by the file type.
        device: for the torch engine: auto, cpu, cuda or cuda:N. The onnx engine runs on the CPU.

    Raises:
        ModelFileError: the engine does not fit the file, or the file is not a tlearn model.

    Example:
        >>> load_engine("runs/first").engine, load_engine("model.onnx").engine  # doctest: +SKIP
        ('torch', 'onnx')
    """
    path = local_model(path)
    if check_engine(path, engine=engine, device=device) == "onnx":
        from tlearn.engines.onnx_engine import OnnxClassifier  # deferred: onnxruntime only for .onnx files

        return OnnxClassifier.load(path)
    from tlearn.engines.torch_engine import Classifier  # deferred: imports torch

    return Classifier.load(path, device=device)


def check_engine(path: str | Path, *, engine: str | None = None, device: str = "auto") -> str:
    """The engine for `path` ("torch" or "onnx"), after checking that the model is there and fits it (cheap).

    Raises:
        ModelFileError: the file or directory is missing, or does not fit the engine or device asked for.
    """
    path = local_model(path)
    is_onnx = path.suffix.lower() == ONNX_SUFFIX
    engine = engine or ("onnx" if is_onnx else "torch")
    if engine not in ENGINES:
        raise ModelFileError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "onnx" and not is_onnx:
        raise ModelFileError(
            f"{path}: the onnx engine needs an .onnx file; make one with "
            f"`tlearn export {path} --format onnx --out model.onnx`"
        )
    if engine == "onnx" and device.startswith("cuda"):
        raise ModelFileError(f"--device {device}: the onnx engine runs on the CPU; use --engine torch for a GPU")
    if engine == "torch" and is_onnx:
        raise ModelFileError(
            f"{path}: an ONNX file runs on the onnx engine (drop --engine torch, or give the model directory)"
        )
    if is_onnx and not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    if not is_onnx:
        model_folder(path)
    return engine
