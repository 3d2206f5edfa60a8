"""Decoding one image file into an RGB picture, or a one-line reason why it cannot be used.

A folder of real photos always holds a few bad files: empty downloads, truncated JPEGs, HTML pages saved
as `.jpg`, 16-bit TIFFs, palette PNGs with transparency, decompression bombs. Each is turned into an
`ImageDecodeError` whose message names the problem; the caller records it and moves on. Files are only
ever opened for reading.

This module imports neither torch nor torchvision so that decoding workers start fast.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# PIL's own threshold for "possible decompression bomb" (about 89.5 megapixels).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Bumped whenever decoding changes in a way that changes pixels (so cached embeddings are recomputed).
DECODER_VERSION = 1

_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageDecodeError(Exception):
    """This file cannot be used as an image; the message is the reason, for the data report."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed (a possible decompression bomb); refused before decoding."""


def is_image_name(path: str | Path) -> bool:
    """Whether the file name has one of the supported image extensions (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_hidden_name(name: str) -> bool:
    """Hidden files and folders (`.DS_Store`, macOS `._photo.jpg` forks, `.ipynb_checkpoints`)."""
    return name.startswith(".")


def load_rgb(
    source: str | Path | bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode an image file (or its bytes) into a fully loaded RGB picture.

    EXIF orientation is applied; any colour mode is converted to RGB (transparency is composited onto
    white, 16-bit and float images are scaled to 8 bits); only the first frame of an animation is used.

    Args:
        source: a path, the file's bytes, or a binary file object.
        max_pixels: images with more pixels than this are refused before decoding (decompression bombs).
        draft_size: for JPEGs, let the decoder downscale by 2, 4 or 8 in the DCT domain as long as both
            sides stay at least this large. Much faster for camera photos; no effect on small images.

    Returns:
        A loaded PIL image in mode RGB.

    Raises:
        ImageDecodeError: the file is empty, not an image, truncated, corrupt, too large or in a colour
            mode that cannot be converted.

    Example:
        >>> picture = load_rgb("data/ants/0013035.jpg")  # doctest: +SKIP
    """
    if isinstance(source, str | Path):
        # Read the bytes up front: no file handle stays open behind a multi-frame image.
        source = read_file_bytes(source)
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError("empty file (0 bytes)")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # We apply our own pixel limit below; PIL's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(source)
        width, height = picture.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"too many pixels ({width}x{height} = {width * height:,} > limit {max_pixels:,}; "
                "possible decompression bomb)"
            )
        if draft_size and picture.format == "JPEG":
            picture.draft(picture.mode, (draft_size, draft_size))
        picture.load()
        picture = ImageOps.exif_transpose(picture)
        return to_rgb(picture)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (format not recognised)") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"too many pixels ({error}; possible decompression bomb)") from None
    except OSError as error:
        raise ImageDecodeError(f"truncated or corrupt image ({error})") from None
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, MemoryError) as error:
        # PIL's plugins signal malformed content with a variety of built-in exceptions.
        raise ImageDecodeError(f"corrupt image ({type(error).__name__}: {error})") from None


def read_file_bytes(path: str | Path) -> bytes:
    """The file's bytes; an unreadable file is an `ImageDecodeError` naming the OS's reason."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageDecodeError(f"cannot read file ({error.strerror or error})") from None


def to_rgb(picture: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way a person would see the picture on a white page."""
    mode = picture.mode
    if mode == "RGB":
        return picture
    if mode in _TRANSPARENT_MODES or (mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(picture)
    try:
        return picture.convert("RGB")
    except ValueError as error:
        raise ImageDecodeError(f"unsupported colour mode {mode} ({error})") from None


def _high_depth_to_rgb(picture: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale: scale to 8 bits instead of clipping to white."""
    values = np.asarray(picture)
    if picture.mode == "F":
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12) * 255.0
    else:
        values = values.astype(np.int64)
        peak = int(values.max()) if values.size else 0
        if peak <= 255:
            scaled = values
        elif peak <= 65535:
            scaled = values >> 8
        else:
            scaled = values * 255 // peak
    grey = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")
