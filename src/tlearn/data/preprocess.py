"""The evaluation preprocessing of a backbone, on PIL and NumPy only.

`Preprocessing` holds what timm's `resolve_data_config` says about a model (input size, interpolation,
mean/std, crop percentage and mode). `EvalPreprocess` applies it exactly as timm's eval transform does
(resize, centre crop, normalise; a test checks the two agree pixel for pixel) but without importing torch,
so decoding workers start in a fraction of a second and the cached-feature path never loads torch.
Normalisation is kept separate (`normalize`) so batches travel between processes as compact uint8.

Large pictures are made small cheaply before the exact resize: JPEGs are decoded at 1/2, 1/4 or 1/8 scale in
the DCT domain (Pillow's draft mode) down to the smallest size that still covers `DRAFT_MARGIN` times the
resize target, and other formats are first reduced by an integer factor while at least `REDUCING_GAP` times
the target remains (Pillow's `reducing_gap`, documented as indistinguishable from a full resample at 3). A 12 MP
JPEG is then about 5x faster to preprocess; small pictures are resized exactly as timm does.
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

from tlearn.data.images import (
    DECODER_VERSION,
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageMemoryError,
    ImageShapeError,
    check_aspect_ratio,
    load_rgb,
)

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
CROP_MODES = ("center", "squash", "border")
# Pre-reduce by an integer factor only while at least this many times the resize target remains.
REDUCING_GAP = 3.0
# JPEG DCT scaling stops while the decoded picture still covers this many times the resize target, so the final
# antialiased resize always shrinks by at least this much and shapes the result as it does after a full decode.
# Measured with Lite0 (`benchmarks/bench_scale.py --draft-accuracy`): drafting exactly to the target decodes
# the 512 px MRI scans at 1/2 with nothing left for the resize, moves their embeddings by 10% (median, relative)
# and scored 80.0% on the MRI protocol against 81.9% for full decoding; with this margin: 82.3%, and over 20
# paired resplits +0.03 ± 0.07 points. 12 MP photos still decode at 1/8 (375 px, then resized 1.46x; hymenoptera
# upscaled to 12 MP: 93.5% as with full decoding), as do 8 MP ones (306 px). Twice the target (decoder
# version 1) kept 12 MP photos at 1/4: 3.7x faster than a full decode instead of 4-5x.
DRAFT_MARGIN = 1.15


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

    Sizes are checked before anything is allocated: the pixel count and aspect ratio of the file
    (`load_rgb`), then the size the picture would be resized to, which must stay within `max_pixels` too.

    Example:
        >>> prep = EvalPreprocess(Preprocessing((224, 224), "bicubic", (0.5,) * 3, (0.5,) * 3, 0.875))
        >>> prep.from_picture(Image.new("RGB", (500, 375))).shape
        (224, 224, 3)
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        *,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    ) -> None:
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        # Both sides, either orientation (EXIF rotation comes after decoding): the larger side of the target.
        self.draft_size = math.ceil(DRAFT_MARGIN * max(preprocessing.scale_size))

    def from_file(self, source: str | Path | bytes) -> np.ndarray:
        """Decode a file (path or bytes) and preprocess it. Raises `ImageDecodeError` for bad files."""
        picture = load_rgb(
            source, max_pixels=self.max_pixels, draft_size=self.draft_size, max_aspect_ratio=self.max_aspect_ratio
        )
        return self.from_picture(picture)

    def from_picture(self, picture: Image.Image) -> np.ndarray:
        """Preprocess an already decoded RGB picture.

        Raises:
            ImageShapeError: the picture's aspect ratio, or its resized size, is beyond the limits.
            ImageMemoryError: memory ran out while resizing (transient).
        """
        prep = self.preprocessing
        target_h, target_w = prep.input_size
        check_aspect_ratio(picture.size, self.max_aspect_ratio)
        resized_w, resized_h = self.resized_size(picture.size)
        if resized_w * resized_h > self.max_pixels:
            raise ImageShapeError(
                f"{picture.width}x{picture.height} pixels would be resized to {resized_w}x{resized_h} "
                f"(over the limit of {self.max_pixels:,} pixels)"
            )
        try:
            picture = picture.resize(
                (resized_w, resized_h), _PIL_FILTERS[prep.interpolation], reducing_gap=REDUCING_GAP
            )
            fill = tuple(round(255 * value) for value in prep.mean) if prep.crop_mode == "border" else (0, 0, 0)
            return _center_crop_or_pad(np.asarray(picture, dtype=np.uint8), target_h, target_w, fill)
        except MemoryError:
            raise ImageMemoryError("out of memory while resizing (not remembered: retried on the next run)") from None

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) a picture of `size` is resized to before the crop, as timm computes it."""
        prep = self.preprocessing
        scale_h, scale_w = prep.scale_size
        if prep.crop_mode == "squash":
            return scale_w, scale_h
        if prep.crop_mode == "border":
            return _keep_ratio_size(size, (scale_h, scale_w), longest=True)
        if scale_h == scale_w:
            return _shorter_side_size(size, scale_h)
        return _keep_ratio_size(size, (scale_h, scale_w), longest=False)


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
