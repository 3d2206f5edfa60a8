"""Training images decoded once and kept in memory, and the random augmentation applied to them each epoch.

Fine-tuning sees every training image once per epoch. Decoding a JPEG costs about as much as a third of a
CPU forward pass, so decoding it again every epoch (what a file-backed DataLoader does) wastes a large share
of a 2-core machine. Images are decoded once, in worker processes, resized so their shorter side is a little
larger than the training crop (`STORE_SCALE`), and kept as uint8 tensors; each epoch only crops, flips and
jitters them. When the folder is too large for `memory_limit`, images are decoded from their files each
time instead (the same transform, in DataLoader workers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from tlearn.data.images import ImageDecodeError, load_rgb
from tlearn.data.preprocess import Preprocessing
from tlearn.errors import TlearnError
from tlearn.util.orphans import die_with_parent

STORE_SCALE = 1.15  # stored shorter side / training crop size: room for the random crop's scale range
MAX_STORED_ASPECT = 2.0  # longer side kept at most this multiple of the shorter (centre), bounding memory
DEFAULT_MEMORY_LIMIT = 3 * 2**30


@dataclass(frozen=True)
class StoredFit:
    """How a training picture is fitted before the random crop: as the evaluation's crop mode fits it, so
    training and evaluation see the same part of the picture (all of it under squash and border)."""

    crop_mode: str = "center"
    fill: tuple[int, int, int] = (0, 0, 0)  # border's padding colour (the backbone's mean)

    @classmethod
    def of(cls, preprocessing: Preprocessing) -> StoredFit:
        return cls(preprocessing.crop_mode, tuple(round(255 * value) for value in preprocessing.mean))


_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}


def train_transform(
    preprocessing: Preprocessing, *, size: int, augment: str, scale: tuple[float, float] = (0.25, 1.0)
) -> v2.Compose:
    """uint8 (3, H, W) image → augmented (3, size, size) uint8 image (normalisation happens on the device).

    Args:
        preprocessing: the backbone's interpolation.
        size: the square training crop.
        augment: "basic" (random resized crop, flip, mild colour jitter), "trivial" (crop, flip,
            TrivialAugmentWide) or "none" (a random crop at the evaluation scale only).
        scale: the random resized crop's area range.
    """
    interpolation = _INTERPOLATION[preprocessing.interpolation]
    if augment == "none":
        return v2.Compose(
            [v2.Resize(math.floor(size / preprocessing.crop_pct), interpolation=interpolation), v2.RandomCrop(size)]
        )
    steps = [
        v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "trivial":
        # Its rotations and shears run on tensors, where torchvision supports nearest and bilinear only.
        steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
    else:
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    return v2.Compose(steps)


def decode_for_training(path: Path, shorter_side: int, max_pixels: int, fit: StoredFit | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the image fitted per `fit` (default: its shorter side resized to `shorter_side`, its
    longer side at most MAX_STORED_ASPECT times that, centre kept). Raises `ImageDecodeError`."""
    picture = load_rgb(path, max_pixels=max_pixels, draft_size=2 * shorter_side)
    fit = fit or StoredFit()
    if fit.crop_mode == "squash":  # the whole picture, as the evaluation's squash sees it
        picture = picture.resize((shorter_side, shorter_side), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.array(picture, dtype=np.uint8)
    if fit.crop_mode == "border":  # the whole picture on a square of the mean colour, as evaluation pads it
        padded = ImageOps.pad(picture, (shorter_side, shorter_side), Image.Resampling.BICUBIC, color=fit.fill)
        return np.array(padded, dtype=np.uint8)
    width, height = picture.size
    ratio = shorter_side / min(width, height)
    new_width, new_height = max(shorter_side, round(width * ratio)), max(shorter_side, round(height * ratio))
    picture = picture.resize((new_width, new_height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    pixels = np.array(picture, dtype=np.uint8)  # a writable copy: torch shares its memory
    longest = int(MAX_STORED_ASPECT * shorter_side)
    if pixels.shape[0] > longest:
        top = (pixels.shape[0] - longest) // 2
        pixels = pixels[top : top + longest]
    if pixels.shape[1] > longest:
        left = (pixels.shape[1] - longest) // 2
        pixels = pixels[:, left : left + longest]
    return np.ascontiguousarray(pixels)


def _decode_chunk(paths: Sequence[Path], shorter_side: int, max_pixels: int, fit: StoredFit) -> list[np.ndarray | str]:
    decoded: list[np.ndarray | str] = []
    for path in paths:
        try:
            decoded.append(decode_for_training(path, shorter_side, max_pixels, fit))
        except ImageDecodeError as error:
            decoded.append(str(error))
    return decoded


class TrainImages(Dataset):
    """Augmented training images with their labels: decoded once into memory, or from their files each time.

    Example:
        >>> images = TrainImages(paths, labels, transform, shorter_side=258, workers=1)  # doctest: +SKIP
        >>> pixels, label = images[0]  # (3, 224, 224) uint8, int  # doctest: +SKIP
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray,
        transform: v2.Compose,
        *,
        shorter_side: int,
        workers: int,
        max_pixels: int,
        fit: StoredFit | None = None,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.paths, self.labels, self.transform = list(paths), labels, transform
        self.shorter_side, self.max_pixels, self.fit = shorter_side, max_pixels, fit or StoredFit()
        estimate = len(self.paths) * 3 * shorter_side * int(shorter_side * 1.5)
        self.stored: list[torch.Tensor] | None = None
        if estimate <= memory_limit:
            self.stored = self._decode_all(workers)

    def _decode_all(self, workers: int) -> list[torch.Tensor]:
        chunk = 16
        chunks = [self.paths[start : start + chunk] for start in range(0, len(self.paths), chunk)]
        arguments = (self.shorter_side, self.max_pixels, self.fit)
        if workers > 0 and len(chunks) > 1:
            with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                results = list(pool.map(_decode_chunk, chunks, *[[value] * len(chunks) for value in arguments]))
        else:
            results = [_decode_chunk(paths, *arguments) for paths in chunks]
        stored = []
        for path, item in zip(self.paths, (item for result in results for item in result), strict=True):
            if isinstance(item, str):
                raise TlearnError(f"{path}: became unreadable during training ({item})")
            stored.append(torch.from_numpy(item).permute(2, 0, 1))  # (3, H, W) uint8, a view
        return stored

    @property
    def in_memory(self) -> bool:
        """Whether the images were decoded once and kept (else they are decoded from files each time)."""
        return self.stored is not None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.stored is not None:
            image = self.stored[index]
        else:
            try:
                pixels = decode_for_training(self.paths[index], self.shorter_side, self.max_pixels, self.fit)
            except ImageDecodeError as error:
                raise TlearnError(f"{self.paths[index]}: became unreadable during training ({error})") from None
            image = torch.from_numpy(pixels).permute(2, 0, 1)
        label = self.labels[index]  # a class index, or a row of 0/1 indicators for multi-label data
        return self.transform(image), (int(label) if np.ndim(label) == 0 else torch.from_numpy(np.asarray(label)))
