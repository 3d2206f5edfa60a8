"""The evaluation preprocessing of a backbone, on PIL and NumPy only.

`Preprocessing` holds what timm's `resolve_data_config` says about a model (input size, interpolation,
mean/std, crop percentage and mode). `EvalPreprocess` applies it exactly as timm's eval transform does
(resize, centre crop, normalise; a test checks the two agree pixel for pixel) but without importing torch,
so decoding workers start in a fraction of a second and the cached-feature path never loads torch.
Normalisation is kept separate (`normalize`) so batches travel between processes as compact uint8.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tlearn.data.images import DECODER_VERSION, DEFAULT_MAX_IMAGE_PIXELS, load_rgb

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone expects its input, as timm's data config describes it."""

    input_size: tuple[int, int]  # (height, width)
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_FILTERS:
            raise ValueError(
                f"unsupported interpolation {self.interpolation!r}; expected one of {sorted(_PIL_FILTERS)}"
            )
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"unsupported crop mode {self.crop_mode!r}; expected one of {CROP_MODES}")

    @classmethod
    def from_timm(cls, data_config: Mapping[str, Any]) -> Preprocessing:
        """Build from `timm.data.resolve_data_config(model=...)`'s dictionary."""
        _, height, width = data_config["input_size"]
        return cls(
            input_size=(int(height), int(width)),
            interpolation=str(data_config.get("interpolation") or "bilinear"),
            mean=tuple(float(v) for v in data_config["mean"]),
            std=tuple(float(v) for v in data_config["std"]),
            crop_pct=float(data_config.get("crop_pct") or 0.875),
            crop_mode=str(data_config.get("crop_mode") or "center"),
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """Inverse of `to_dict` (as stored in a model's `config.json`)."""
        return cls(
            input_size=tuple(values["input_size"]),
            interpolation=values["interpolation"],
            mean=tuple(values["mean"]),
            std=tuple(values["std"]),
            crop_pct=float(values["crop_pct"]),
            crop_mode=values.get("crop_mode", "center"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists, not tuples)."""
        values = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    @property
    def scale_size(self) -> tuple[int, int]:
        """The (height, width) the picture is resized to before cropping, as timm computes it."""
        height, width = self.input_size
        return math.floor(height / self.crop_pct), math.floor(width / self.crop_pct)

    def fingerprint(self) -> str:
        """A short stable hash of everything that changes the pixels a backbone sees."""
        payload = json.dumps({"pre": self.to_dict(), "decoder": DECODER_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class EvalPreprocess:
    """Decode + resize + crop one image file into a (H, W, 3) uint8 array, timm's eval transform without torch.

    Example:
        >>> prep = EvalPreprocess(Preprocessing((224, 224), "bicubic", (0.5,) * 3, (0.5,) * 3, 0.875))
        >>> prep.from_picture(Image.new("RGB", (500, 375))).shape
        (224, 224, 3)
    """

    def __init__(self, preprocessing: Preprocessing, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        # Let JPEG decoding downscale only while at least twice the resize target remains, so the final
        # antialiased resize still sees the detail it would see in the full-size picture.
        self._draft_size = 2 * max(preprocessing.scale_size)

    def from_file(self, path: str | Path | bytes) -> np.ndarray:
        """Decode a file (path or bytes) and preprocess it. Raises `ImageDecodeError` for bad files."""
        return self.from_picture(load_rgb(path, max_pixels=self.max_pixels, draft_size=self._draft_size))

    def from_picture(self, picture: Image.Image) -> np.ndarray:
        """Preprocess an already decoded RGB picture."""
        prep = self.preprocessing
        resample = _PIL_FILTERS[prep.interpolation]
        target_h, target_w = prep.input_size
        scale_h, scale_w = prep.scale_size
        if prep.crop_mode == "squash":
            picture = picture.resize((scale_w, scale_h), resample)
        elif prep.crop_mode == "border":
            picture = picture.resize(_keep_ratio_size(picture.size, (scale_h, scale_w), longest=True), resample)
        elif scale_h == scale_w:
            picture = picture.resize(_shorter_side_size(picture.size, scale_h), resample)
        else:
            picture = picture.resize(_keep_ratio_size(picture.size, (scale_h, scale_w), longest=False), resample)
        fill = tuple(round(255 * value) for value in prep.mean) if prep.crop_mode == "border" else (0, 0, 0)
        return _center_crop_or_pad(np.asarray(picture, dtype=np.uint8), target_h, target_w, fill)


def normalize(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 normalised with the backbone's mean and std."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1)
    batch = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return (batch - mean) / std


def _shorter_side_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """torchvision's Resize(int): shorter side → `shorter`, longer side truncated proportionally."""
    width, height = size
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def _keep_ratio_size(size: tuple[int, int], target: tuple[int, int], *, longest: bool) -> tuple[int, int]:
    """timm's ResizeKeepRatio (no random scaling): fit the shorter (or longer) side to the target."""
    width, height = size
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
    return round(width / ratio), round(height / ratio)


def _center_crop_or_pad(pixels: np.ndarray, height: int, width: int, fill: tuple[int, int, int]) -> np.ndarray:
    """torchvision's CenterCrop (padding first when the picture is smaller than the crop)."""
    in_h, in_w = pixels.shape[:2]
    if in_h < height or in_w < width:
        pad_h, pad_w = max(height - in_h, 0), max(width - in_w, 0)
        padded = np.empty((in_h + pad_h, in_w + pad_w, 3), dtype=np.uint8)
        padded[...] = np.asarray(fill, dtype=np.uint8)
        top, left = pad_h // 2, pad_w // 2
        padded[top : top + in_h, left : left + in_w] = pixels
        pixels, in_h, in_w = padded, in_h + pad_h, in_w + pad_w
    top = round((in_h - height) / 2.0)
    left = round((in_w - width) / 2.0)
    return np.ascontiguousarray(pixels[top : top + height, left : left + width])
