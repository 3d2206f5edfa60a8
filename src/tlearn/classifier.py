"""A trained model, loaded for inference: `tlearn.load(path).predict([...])` (imports torch).

The loader never unpickles: weights come from safetensors, everything else from JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file as load_torch_safetensors
from torch import nn

from tlearn.backbones import normalize_on_device
from tlearn.devices import resolve_device
from tlearn.errors import ModelFileError
from tlearn.head import softmax
from tlearn.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, to_rgb
from tlearn.loader import BatchDecoder, default_workers
from tlearn.model_files import WEIGHTS_FILE, ModelConfig, model_folder, read_config
from tlearn.preprocess import EvalPreprocess
from tlearn.progress import Progress

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass
class Prediction:
    """Top-k answer for one image, or the reason it could not be read."""

    source: str  # file path, or "<image N>" for in-memory images
    labels: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The top-1 class (None when the image could not be read)."""
        return self.labels[0] if self.labels else None

    def to_dict(self) -> dict:
        return {"source": self.source, "labels": self.labels, "probabilities": self.probabilities, "error": self.error}


class Classifier:
    """A trained tlearn model on a device.

    Example:
        >>> clf = Classifier.load("runs/ants/model")  # doctest: +SKIP
        >>> clf.predict(["bee.jpg"], top_k=1)[0].label  # doctest: +SKIP
        'bees'
    """

    def __init__(self, model: nn.Module, config: ModelConfig, device: torch.device, folder: Path | None = None) -> None:
        self.config = config
        self.device = device
        self.folder = folder
        self.model = model.eval().to(device=device, memory_format=torch.channels_last)
        self.preprocessing = config.preprocessing_spec()
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
        return cls(model, config, resolve_device(device), folder)

    @property
    def classes(self) -> list[str]:
        """Class names in output order."""
        return list(self.config.classes)

    @torch.inference_mode()
    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_classes) calibrated probabilities."""
        batch = normalize_on_device(pixels, self._mean, self._std, self.device)
        logits = self.model(batch).float().cpu().numpy()
        return softmax(logits / self.config.temperature)

    def predict(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int = 3,
        batch_size: int = 32,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> list[Prediction]:
        """Top-k labels for files (decoded in parallel), PIL images or RGB arrays.

        A file that cannot be decoded gets a `Prediction` with `error` set; the others are still predicted.
        """
        progress = progress or Progress(quiet=True)
        top_k = max(1, min(top_k, len(self.classes)))
        results: list[Prediction | None] = [None] * len(images)
        files = [(i, Path(item)) for i, item in enumerate(images) if isinstance(item, str | Path)]
        in_memory = [(i, item) for i, item in enumerate(images) if not isinstance(item, str | Path)]
        if files:
            for positions, probabilities, failures in self._stream_files([path for _, path in files], batch_size,
                                                                         workers, progress):
                for position, reason in failures:
                    index, path = files[position]
                    results[index] = Prediction(source=str(path), error=reason)
                for position, row in zip(positions, probabilities, strict=True):
                    index, path = files[position]
                    results[index] = self._top_k(str(path), row, top_k)
        if in_memory:
            prep = EvalPreprocess(self.preprocessing)
            for start in range(0, len(in_memory), batch_size):
                chunk = in_memory[start : start + batch_size]
                pixels = np.stack([prep.from_picture(_as_picture(item)) for _, item in chunk])
                for (index, _), row in zip(chunk, self.probabilities(pixels), strict=True):
                    results[index] = self._top_k(f"<image {index}>", row, top_k)
        return [result for result in results if result is not None]

    def predict_files_probabilities(
        self, paths: Sequence[Path], *, batch_size: int = 32, workers: int | None = None, progress: Progress
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Probabilities for every file ((N, C), zero rows for failures) and the failure reasons."""
        matrix = np.zeros((len(paths), len(self.classes)), dtype=np.float32)
        failures: dict[int, str] = {}
        for positions, probabilities, batch_failures in self._stream_files(paths, batch_size, workers, progress):
            failures.update(batch_failures)
            if positions:
                matrix[positions] = probabilities
        return matrix, failures

    def _stream_files(self, paths: Sequence[Path], batch_size: int, workers: int | None, progress: Progress):
        workers = workers if workers is not None else default_workers(accelerator=self.device.type == "cuda")
        with (
            BatchDecoder(list(paths), self.preprocessing, batch_size=batch_size, workers=workers,
                         max_pixels=DEFAULT_MAX_IMAGE_PIXELS) as batches,
            progress.bar(total=len(paths), desc="predicting") as bar,
        ):
            for batch in batches:
                probabilities = self.probabilities(batch.pixels) if batch.positions else np.empty((0, 0))
                yield batch.positions, probabilities, batch.failures
                bar.update(len(batch.positions) + len(batch.failures))

    def _top_k(self, source: str, row: np.ndarray, top_k: int) -> Prediction:
        order = np.argsort(-row)[:top_k]
        return Prediction(source, [self.classes[i] for i in order], [float(row[i]) for i in order])


def _as_picture(item: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    array = np.asarray(item)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return to_rgb(Image.fromarray(array.astype(np.uint8)))
    raise ImageDecodeError(f"expected an (H, W) or (H, W, 3|4) uint8 array, got shape {array.shape}")
