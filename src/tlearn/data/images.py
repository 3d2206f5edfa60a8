"""Decoding one image file into an RGB picture, or a one-line reason why it cannot be used.

A folder of real photos always holds a few bad files: empty downloads, truncated JPEGs, HTML pages saved
as `.jpg`, 16-bit TIFFs, palette PNGs with transparency, decompression bombs. Each is turned into an
`ImageDecodeError` whose message names the problem; the caller records it and moves on. Files are only
ever opened for reading.

Untrusted bytes only ever reach the decoders of the formats we list (`ALLOWED_FORMATS`, the formats of
`IMAGE_EXTENSIONS`): Pillow would otherwise pick a decoder by content, and an EPS file renamed `x.jpg` would
start Ghostscript. Sizes are checked before anything large is allocated: the pixel count (decompression
bombs) and the aspect ratio (a 178-byte PNG of 100000x1 pixels whose short side resized to 256 would need
tens of GB). Running out of memory is a per-file error marked `transient`, so callers never remember it as a
property of the file.

This module imports neither torch nor torchvision so that decoding workers start fast.
"""

from __future__ import annotations

import errno
import io
import os
import re
import time
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from tlearn.data.shards import ShardError, open_member

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# The Pillow formats of IMAGE_EXTENSIONS: the only decoders that ever see a file's bytes. Camera JPEGs that
# Pillow reports as MPO (multi-picture JPEG) come through the JPEG opener.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# PIL's own threshold for "possible decompression bomb" (about 89.5 megapixels).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# Files larger than this are refused before a byte is read: the largest image within the pixel limit, stored
# uncompressed at 16 bits per RGB channel (a TIFF), takes 537 MB; a 1 GB "photo" would otherwise be read whole
# into a worker's memory before its header is even looked at.
MAX_FILE_BYTES = 600_000_000

# Scans a progressive JPEG may hold. Every scan makes the decoder pass over all the picture's coefficients
# again, so a 147 KB 6000x6000 file with its last scan repeated 100 times took 7.4 s to decode (1,000 repeats:
# 64 s in 200 KB). Encoders write far fewer: libjpeg's progressive script has 10 scans for colour and 6 for
# grey, Photoshop 3-5, mozjpeg's optimised scripts under 20.
MAX_JPEG_SCANS = 32
_SCAN_MARKER = b"\xff\xda"  # SOS; entropy-coded data stuffs every 0xFF with 0x00, so it only appears as a marker

# CPU seconds one file's decoding may take (this thread's CPU time, so a busy machine never refuses a good file).
# A 36 MP baseline JPEG takes 0.35 s here, at the scan limit a progressive bomb ~2.4 s: this bounds what no
# header check foresees (a decoder's slow path) at 14x the cost of the largest ordinary photo.
MAX_DECODE_CPU_SECONDS = 5.0

# Wider than any panorama or banner we expect to classify; beyond it the centre crop would show a sliver, and
# resizing the short side to the backbone's size would allocate the long side times that ratio.
DEFAULT_MAX_ASPECT_RATIO = 50.0

# Bumped whenever decoding changes in a way that changes pixels (so cached embeddings are recomputed).
# 2: JPEG draft decoding down to 1.15x the resize target (was 2x); large pictures pre-reduced by an integer
# factor before resampling (Pillow's reducing_gap). 3: RGB and greyscale PNGs with a tRNS colour key show white
# where the key colour is transparent (they showed the key colour).
DECODER_VERSION = 3

_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_KEYED_MODES = frozenset({"RGB", "L", "P"})  # modes whose transparency Pillow gives as a colour key or index

# Leading bytes of formats people rename to .jpg/.png, so the refusal can say what the file is.
_SIGNATURES = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "Photoshop PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "Windows icon"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"gimp xcf", "GIMP XCF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis")

# Pixels handled at a time when scaling high bit depths: bounds the temporaries whatever the picture's size.
_ROWS_BUDGET = 1 << 20


class ImageDecodeError(Exception):
    """This file cannot be used as an image; the message is the reason, for the data report.

    `transient` is True when the failure says nothing lasting about the file (it ran out of memory): callers
    report it for this run but never remember it as a verdict on the file's content.
    """

    transient = False


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed (a possible decompression bomb); refused before decoding."""


class ImageShapeError(ImageTooLargeError):
    """The image's aspect ratio, or the size it would be resized to, is beyond the limits; refused before
    anything of that size is allocated (a `ImageTooLargeError`: the service answers 413)."""


class ImageDecodeTimeError(ImageTooLargeError):
    """Decoding this file took more CPU time than allowed; stopped between two blocks of its bytes (a
    `ImageTooLargeError`: the service answers 413, never "retry"). A lasting verdict, like the size limits:
    the limit is many times what an ordinary photo costs, so the next run refuses the file without decoding."""


class _CpuLimitedBytes(io.BytesIO):
    """A file's bytes that stop being handed out once this thread has spent `seconds` of CPU on the file.

    Why not a timer or a process: Pillow decodes by reading a block (64 KB) and passing it to the C decoder, in
    a loop, so a check at each read bounds a decode to the limit plus one block's work, in the calling thread
    (the service decodes in threads, which cannot be killed). Decoders that take all bytes at once (WebP,
    compressed TIFF) are bounded by the pixel limit instead.
    """

    def __init__(self, content: bytes, seconds: float) -> None:
        super().__init__(content)
        self.seconds = seconds
        self._deadline = time.thread_time() + seconds

    def read(self, size: int | None = -1) -> bytes:
        if time.thread_time() > self._deadline:
            raise ImageDecodeTimeError(
                f"decoding took more than {self.seconds:g} CPU seconds (stopped; possible decompression bomb)"
            )
        return super().read(size)


class ImageMemoryError(ImageDecodeError):
    """Memory ran out while decoding or resizing this image: a failure of this attempt, not of the file."""

    transient = True


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
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    max_cpu_seconds: float | None = None,
) -> Image.Image:
    """Decode an image file (or its bytes) into a fully loaded RGB picture.

    EXIF orientation is applied; any colour mode is converted to RGB (transparency is composited onto
    white, 16-bit and float images are scaled to 8 bits); only the first frame of an animation is used.
    Only the formats of `IMAGE_EXTENSIONS` are decoded, whatever the file's name says.

    Args:
        source: a path, the file's bytes, or a binary file object.
        max_pixels: images with more pixels than this are refused before decoding (decompression bombs).
        draft_size: for JPEGs, let the decoder downscale by 2, 4 or 8 in the DCT domain as long as both
            sides stay at least this large. Much faster for camera photos; no effect on small images.
        max_aspect_ratio: images whose long side exceeds this many times their short side are refused
            before decoding.
        max_cpu_seconds: decoding stops with `ImageDecodeTimeError` once it has taken this much of the
            calling thread's CPU time (None: `MAX_DECODE_CPU_SECONDS`).

    Returns:
        A loaded PIL image in mode RGB.

    Raises:
        ImageDecodeError: the file is empty, not an image of a supported format, truncated, corrupt, too
            large (`ImageTooLargeError`, `ImageShapeError`), too slow to decode (`ImageDecodeTimeError`), in a
            colour mode that cannot be converted, or memory ran out (`ImageMemoryError`, transient).

    Example:
        >>> picture = load_rgb("data/ants/0013035.jpg")  # doctest: +SKIP
    """
    if isinstance(source, str | Path):
        # Read the bytes up front: no file handle stays open behind a multi-frame image.
        source = read_file_bytes(source)
    elif not isinstance(source, bytes):
        source = source.read()
    if not source:
        raise ImageDecodeError("empty file (0 bytes)")
    source = _CpuLimitedBytes(source, MAX_DECODE_CPU_SECONDS if max_cpu_seconds is None else max_cpu_seconds)
    try:
        with warnings.catch_warnings():
            # We apply our own pixel limit below; PIL's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(source, formats=ALLOWED_FORMATS)
        width, height = picture.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"too many pixels ({width}x{height} = {width * height:,} > limit {max_pixels:,}; "
                "possible decompression bomb)"
            )
        check_aspect_ratio(picture.size, max_aspect_ratio)
        if isinstance(picture, JpegImagePlugin.JpegImageFile) and picture.info.get("progressive"):
            check_scan_count(source)
        if draft_size and isinstance(picture, JpegImagePlugin.JpegImageFile):  # JPEG and MPO
            picture.draft(picture.mode, (draft_size, draft_size))
        picture.load()
        picture = ImageOps.exif_transpose(picture)
        return to_rgb(picture)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageMemoryError("out of memory while decoding (not remembered: retried on the next run)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified_reason(source)) from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(_bomb_reason(error, max_pixels)) from None
    except OSError as error:
        raise ImageDecodeError(f"truncated or corrupt image ({error})") from None
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError) as error:
        # PIL's plugins signal malformed content with a variety of built-in exceptions.
        raise ImageDecodeError(f"corrupt image ({type(error).__name__}: {error})") from None


def _bomb_reason(error: Image.DecompressionBombError, max_pixels: int) -> str:
    """The reason for an image Pillow refused to open (over twice its own MAX_IMAGE_PIXELS), naming tlearn's
    limit: Pillow's message quotes its own 179 MP, which is not the limit the user can change."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(found.group(1)) if found else None
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if pixels is not None and pixels <= max_pixels:  # tlearn allows it, Pillow does not (a limit above Pillow's)
        return f"too many pixels ({pixels:,} > Pillow's limit {pillow_limit:,}; possible decompression bomb)"
    count = f"{pixels:,}" if pixels is not None else f"more than {pillow_limit:,}"
    return f"too many pixels ({count} > limit {max_pixels:,}; possible decompression bomb)"


def declared_size(content: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it, read without decoding a pixel; None when no allowed
    decoder recognises the bytes (decoding them then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=ALLOWED_FORMATS) as picture:
                return picture.size
    except Exception:  # any unreadable header: the decoder's own error is the one to report
        return None


def check_scan_count(source: BinaryIO, limit: int = MAX_JPEG_SCANS) -> None:
    """Refuse a progressive JPEG with more scans than `limit` before it is decoded (a scan bomb).

    Counts SOS markers over the whole file (an EXIF thumbnail's own scan counts too: one more, well within
    the limit).

    Raises:
        ImageTooLargeError: too many scans.
    """
    position = source.tell()
    source.seek(0)
    scans = source.read().count(_SCAN_MARKER)
    source.seek(position)
    if scans > limit:
        raise ImageTooLargeError(
            f"progressive JPEG with {scans} scans (limit {limit}; every scan decodes the whole picture again: "
            "possible decompression bomb)"
        )


def check_aspect_ratio(size: tuple[int, int], max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> None:
    """Refuse a (width, height) whose long side is more than `max_aspect_ratio` times its short side.

    Raises:
        ImageShapeError: the ratio is beyond the limit (or a side is zero).

    Example:
        >>> check_aspect_ratio((100_000, 1))
        Traceback (most recent call last):
        tlearn.data.images.ImageShapeError: 100000x1 pixels: aspect ratio 100000:1 too extreme (limit 50:1)
    """
    width, height = size
    short, long = min(width, height), max(width, height)
    if short <= 0:
        raise ImageShapeError(f"{width}x{height} pixels: an image needs both sides")
    if long > max_aspect_ratio * short:
        raise ImageShapeError(
            f"{width}x{height} pixels: aspect ratio {long / short:.0f}:1 too extreme (limit {max_aspect_ratio:g}:1)"
        )


def read_file_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes; an unreadable file is an `ImageDecodeError` naming the OS's reason, one larger than
    `max_bytes` an `ImageTooLargeError` (checked before reading, and while reading: a device or a file that
    grows says nothing true in its size).

    A path inside a tar shard (`shards/train-000.tar/0001.jpg`) reads that member's bytes from the shard, under
    the same limit, without extracting anything (see `tlearn.data.shards`); a shard that cannot be read is an
    `ImageDecodeError` naming the shard.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            content = handle.read(max_bytes + 1) if size <= max_bytes else b""
        if size > max_bytes or len(content) > max_bytes:
            raise ImageTooLargeError(_too_large(max(size, len(content)), max_bytes, exact=size > max_bytes))
        return content
    except NotADirectoryError:
        return _read_member(path, max_bytes)
    except OSError as error:
        raise ImageDecodeError(f"cannot read file ({error.strerror or error})") from None
    except MemoryError:
        raise _out_of_memory() from None


def _read_member(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a shard member, read by offset; `read_file_bytes`'s errors."""
    try:
        opened = open_member(path)
        if opened is None:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        handle, member = opened
        with handle:
            if member.size > max_bytes:
                raise ImageTooLargeError(_too_large(member.size, max_bytes, exact=True))
            content = handle.read(member.size)
        if len(content) != member.size:
            raise ImageDecodeError(
                f"cannot read file (the shard ends inside this member: {len(content):,} of {member.size:,} bytes)"
            )
        return content
    except ShardError as error:
        raise ImageDecodeError(str(error)) from None
    except OSError as error:
        raise ImageDecodeError(f"cannot read file ({error.strerror or error})") from None
    except MemoryError:
        raise _out_of_memory() from None


def _too_large(size: int, max_bytes: int, *, exact: bool) -> str:
    return (
        f"file of {size:,} bytes{'' if exact else ' or more'}: larger than any image tlearn reads "
        f"(limit {max_bytes:,} bytes)"
    )


def _out_of_memory() -> ImageMemoryError:
    return ImageMemoryError("out of memory while reading the file (not remembered: retried on the next run)")


def to_rgb(picture: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way a person would see the picture on a white page."""
    mode = picture.mode
    keyed = mode in _KEYED_MODES and "transparency" in picture.info  # a PNG tRNS colour key or palette index
    if mode == "RGB" and not keyed:
        return picture
    if mode in _TRANSPARENT_MODES or keyed:
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
    """16-bit, 32-bit integer and float greyscale: scale to 8 bits instead of clipping to white.

    Works a band of rows at a time in the values' own width (uint16 shifts, float32 scaling), so memory is
    the decoded values plus the 8-bit result plus a bounded band, never an int64 copy of the whole picture.
    """
    values = np.asarray(picture)  # (H, W) uint16, int32 or float32
    grey = np.empty(values.shape, dtype=np.uint8)
    if values.size == 0:
        return Image.fromarray(grey, mode="L").convert("RGB")
    rows = max(1, _ROWS_BUDGET // max(1, values.shape[1]))
    bands = [slice(start, start + rows) for start in range(0, values.shape[0], rows)]
    if picture.mode == "F":
        low, high = _finite_range(values, bands)
        scale = np.float32(255.0 / max(high - low, 1e-12))
        for band in bands:
            block = np.nan_to_num(values[band], nan=low, posinf=high, neginf=low)  # float32 copy of one band
            block -= np.float32(low)
            block *= scale
            np.clip(block, 0, 255, out=block)
            grey[band] = block
        return Image.fromarray(grey, mode="L").convert("RGB")
    peak = int(values.max())
    for band in bands:
        block = values[band]
        if peak <= 255:
            grey[band] = np.clip(block, 0, 255)
        elif peak <= 65535 and block.dtype == np.uint16:
            grey[band] = block >> 8
        elif peak <= 65535:
            grey[band] = np.clip(block >> 8, 0, 255)
        else:
            scaled = block.astype(np.float32)
            scaled *= np.float32(255.0 / peak)
            grey[band] = np.clip(scaled, 0, 255)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _finite_range(values: np.ndarray, bands: list[slice]) -> tuple[float, float]:
    """(min, max) of the finite values, band by band; (0, 1) when none is finite."""
    low, high = np.inf, -np.inf
    for band in bands:
        block = values[band]
        finite = block[np.isfinite(block)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return (low, high) if low <= high else (0.0, 1.0)


def _unidentified_reason(source: BinaryIO) -> str:
    """Why Pillow found no allowed format: what the bytes look like, when we can tell."""
    source.seek(0)
    head = source.read(64)
    kind = next((name for signature, name in _SIGNATURES if head.lstrip().startswith(signature)), None)
    if kind is None and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        kind = "HEIC/AVIF"
    if kind is None:
        return "not an image (format not recognised)"
    return f"not an image we read: looks like {kind} (supported: {', '.join(ALLOWED_FORMATS)})"
