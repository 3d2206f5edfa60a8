"""A trained model, loaded for inference on PyTorch: `tlearn.load(path).predict([...])` (imports torch).

The loader never unpickles: weights come from safetensors, everything else from JSON. Predictions for files,
pictures and folders come from `tlearn.inference.InferenceEngine`, shared with the ONNX engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_torch_safetensors
from torch import nn

from tlearn.backbones import normalize_on_device
from tlearn.devices import resolve_device
from tlearn.errors import ModelFileError
from tlearn.fusion import fold_batchnorm
from tlearn.head import softmax
from tlearn.inference import InferenceEngine
from tlearn.model_files import WEIGHTS_FILE, ModelConfig, model_folder, read_config
from tlearn.progress import Progress

if TYPE_CHECKING:
    from tlearn.export import ExportResult


class Classifier(InferenceEngine):
    """A trained tlearn model on a device.

    Example:
        >>> clf = Classifier.load("runs/ants/model")  # doctest: +SKIP
        >>> clf.predict(["bee.jpg"], top_k=1)[0].label  # doctest: +SKIP
        'bees'
    """

    engine = "torch"

    def __init__(self, model: nn.Module, config: ModelConfig, device: torch.device, folder: Path | None = None) -> None:
        super().__init__(config, folder)
        self.device = device
        self.model = model.eval().to(device=device, memory_format=torch.channels_last)
        self._mean = torch.tensor(self.preprocessing.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocessing.std, device=device).view(1, 3, 1, 1)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> Classifier:
        """Load a model directory (or a run directory holding `model/`).

        Raises:
            ModelFileError: the directory is not a complete tlearn model or its weights do not fit.
        """
        folder = model_folder(path)
        config = read_config(folder)
        try:
            state = load_torch_safetensors(folder / WEIGHTS_FILE)
        except (SafetensorError, OSError) as error:
            raise ModelFileError(f"{folder / WEIGHTS_FILE}: unreadable weights ({error})") from None
        model = timm.create_model(config.arch, pretrained=False, num_classes=len(config.classes))
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise ModelFileError(f"{folder / WEIGHTS_FILE}: weights do not fit {config.arch}: {first}") from None
        model.eval()
        fold_batchnorm(model)  # a loaded model only predicts: about 30% faster on CPU, same outputs
        return cls(model, config, resolve_device(device), folder)

    def export(
        self,
        out: str | Path,
        *,
        export_format: str = "onnx",
        int8: bool = False,
        calibration_data: str | Path | None = None,
        check_data: str | Path | None = None,
        quiet: bool = False,
    ) -> ExportResult:
        """Export to ONNX (fp32 or INT8) or TorchScript, checked against this model before it is written.

        `tlearn.export_model` on the directory this model was loaded from (see it for the checks).

        Args:
            out: the file to write (`.onnx`, `.pt`).
            export_format: "onnx" or "torchscript".
            int8: quantize the ONNX model (static with `calibration_data`, dynamic otherwise).
            calibration_data: a folder of representative images for static INT8.
            check_data: a folder of images to verify on (default: the run's validation split).
            quiet: no status lines.

        Returns:
            The written file with the checks it passed.

        Raises:
            ExportError: a check failed (nothing is written), or the options do not fit together.
            ModelFileError: the model was not loaded from a model directory.

        Example:
            >>> result = tlearn.load("runs/first").export("first.onnx")  # doctest: +SKIP
            >>> tlearn.load(result.path).predict(["bee.jpg"])[0].label  # doctest: +SKIP
            'bees'
        """
        from tlearn.export import export_model  # deferred: tlearn.export imports this module, onnx and onnxruntime

        if self.path is None:
            raise ModelFileError(
                "this classifier was not loaded from a model directory; export the directory "
                "that tlearn.train wrote (RUN/model)"
            )
        return export_model(
            self.path,
            out,
            export_format=export_format,
            int8=int8,
            calibration_data=calibration_data,
            check_data=check_data,
            progress=Progress(quiet=quiet),
        )

    @property
    def accelerated(self) -> bool:
        return self.device.type == "cuda"

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        batch = normalize_on_device(pixels, self._mean, self._std, self.device)
        logits = self.model(batch).float().cpu().numpy()
        return softmax(logits / self.config.temperature)
