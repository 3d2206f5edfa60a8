"""What every inference engine shares: top-k answers, test-time flips and streaming files (torch-free).

An engine (`tlearn.engines.torch_engine.Classifier` on PyTorch, `tlearn.engines.onnx_engine.OnnxClassifier` on
onnxruntime) only has to turn a batch of preprocessed uint8 pixels into class probabilities. Everything else
— decoding files in worker processes while the model runs, constant memory on folders of any size, the
progress bar, top-k answers, in-memory pictures — lives here once, so predict, evaluate and serve behave
the same whichever engine runs the model (`tlearn.engines.loading` picks the engine from the file type).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tlearn.data.decoding import BatchDecoder, default_workers
from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, to_rgb
from tlearn.data.preprocess import EvalPreprocess, Preprocessing
from tlearn.runs.model_dir import ModelConfig
from tlearn.util.progress import Progress

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass
class Prediction:
    """Top-k answer for one image, or the reason it could not be read.

    Example:
        >>> prediction = Prediction("bee.jpg", ["bees", "ants"], [0.97, 0.03])
        >>> prediction.label
        'bees'
    """

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


class InferenceEngine(ABC):
    """A loaded model that maps preprocessed pixels to probabilities; predictions for files and pictures on top.

    Subclasses implement `_forward`. `engine` names the runtime ("torch" or "onnx") and `path` is where the
    model was loaded from (a model directory or an exported file).

    Example:
        >>> engine = load_engine("model.onnx")  # doctest: +SKIP
        >>> [p.label for p in engine.iter_file_predictions([Path("bee.jpg")], top_k=1)]  # doctest: +SKIP
        ['bees']
    """

    engine: str

    def __init__(self, config: ModelConfig, path: Path | None) -> None:
        self.config = config
        self.path = path
        self.preprocessing: Preprocessing = config.preprocessing_spec()

    @property
    def classes(self) -> list[str]:
        """Class names in output order."""
        return list(self.config.classes)

    @property
    def precision(self) -> str:
        """Numeric precision of the weights: fp32 unless the engine says otherwise."""
        return "fp32"

    @property
    def accelerated(self) -> bool:
        """Whether the model runs on an accelerator (decoding then gets most of the CPU cores)."""
        return False

    @abstractmethod
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_classes) calibrated probabilities."""

    def probabilities(self, pixels: np.ndarray, *, flip: bool = False) -> np.ndarray:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_classes) calibrated probabilities.

        With `flip` (test-time augmentation), the mean of the probabilities of each image and its mirror image.
        """
        probabilities = self._forward(pixels)
        if flip:
            mirrored = np.ascontiguousarray(pixels[:, :, ::-1])  # (B, H, W, 3) flipped along W
            probabilities = (probabilities + self._forward(mirrored)) / 2
        return probabilities

    def predict(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int = 3,
        batch_size: int = 32,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> list[Prediction]:
        """Top-k labels for files (decoded in parallel), PIL images or RGB arrays, in input order.

        A file that cannot be decoded gets a `Prediction` with `error` set; the others are still predicted.

        Example:
            >>> [(p.label, round(p.probabilities[0], 2)) for p in clf.predict(["bee.jpg", picture])]  # doctest: +SKIP
            [('bees', 0.97), ('ants', 0.88)]
        """
        results: list[Prediction | None] = [None] * len(images)
        files = [(i, Path(item)) for i, item in enumerate(images) if isinstance(item, str | Path)]
        in_memory = [(i, item) for i, item in enumerate(images) if not isinstance(item, str | Path)]
        answers = self.iter_file_predictions(
            [path for _, path in files], top_k=top_k, batch_size=batch_size, workers=workers, progress=progress
        )
        for (index, _), prediction in zip(files, answers, strict=True):
            results[index] = prediction
        prep = EvalPreprocess(self.preprocessing)
        for start in range(0, len(in_memory), batch_size):
            chunk = in_memory[start : start + batch_size]
            pixels = np.stack([prep.from_picture(_as_picture(item)) for _, item in chunk])
            for (index, _), row in zip(chunk, self.probabilities(pixels), strict=True):
                results[index] = self.top_k(f"<image {index}>", row, top_k)
        return [result for result in results if result is not None]

    def iter_file_predictions(
        self,
        paths: Sequence[Path],
        *,
        top_k: int = 3,
        batch_size: int = 32,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> Iterator[Prediction]:
        """Top-k labels for each file, in input order, yielded batch by batch (constant memory on any folder)."""
        for positions, probabilities, failures in self._stream_files(paths, batch_size, workers, progress):
            answers = {position: Prediction(source=str(paths[position]), error=reason) for position, reason in failures}
            for position, row in zip(positions, probabilities, strict=True):
                answers[position] = self.top_k(str(paths[position]), row, top_k)
            yield from (answers[position] for position in sorted(answers))

    def predict_files_probabilities(
        self,
        paths: Sequence[Path],
        *,
        batch_size: int = 32,
        workers: int | None = None,
        flip: bool = False,
        progress: Progress,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Probabilities for every file ((N, C), zero rows for failures) and the failure reasons.

        `flip` averages each image's probabilities with its mirror image's (test-time augmentation).
        """
        matrix = np.zeros((len(paths), len(self.classes)), dtype=np.float32)
        failures: dict[int, str] = {}
        for positions, probabilities, batch_failures in self._stream_files(
            paths, batch_size, workers, progress, flip=flip
        ):
            failures.update(batch_failures)
            if positions:
                matrix[positions] = probabilities
        return matrix, failures

    def _stream_files(
        self,
        paths: Sequence[Path],
        batch_size: int,
        workers: int | None,
        progress: Progress | None,
        *,
        flip: bool = False,
    ) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
        """(positions, probabilities, failures) per batch; worker processes decode ahead of the model."""
        progress = progress or Progress(quiet=True)
        workers = workers if workers is not None else default_workers(accelerator=self.accelerated)
        with (
            BatchDecoder(
                list(paths),
                self.preprocessing,
                batch_size=batch_size,
                workers=workers,
                max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
            ) as batches,
            progress.bar(total=len(paths), desc="predicting") as bar,
        ):
            for batch in batches:
                probabilities = self.probabilities(batch.pixels, flip=flip) if batch.positions else np.empty((0, 0))
                yield batch.positions, probabilities, batch.failures
                bar.update(len(batch.positions) + len(batch.failures))

    def top_k(self, source: str, row: np.ndarray, top_k: int) -> Prediction:
        """The `top_k` most probable classes of one row of probabilities."""
        order = np.argsort(-row)[: max(1, min(top_k, len(self.classes)))]
        return Prediction(source, [self.classes[i] for i in order], [float(row[i]) for i in order])


def _as_picture(item: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    array = np.asarray(item)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return to_rgb(Image.fromarray(array.astype(np.uint8)))
    raise ImageDecodeError(f"expected an (H, W) or (H, W, 3|4) uint8 array, got shape {array.shape}")
