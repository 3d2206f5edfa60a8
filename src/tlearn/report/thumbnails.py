"""Thumbnails for self-contained pages, decoded in background threads while the page is assembled.

A report shows a few dozen images (worst errors, unsure answers, samples, the audit's label issues). Camera
photos cost about 35 ms each to decode even with JPEG draft mode, because the whole compressed stream must be
read: one after the other, 33 photos of 12 MP added a second to every training run. `thumbnail()` therefore
starts decoding at once in a small thread pool (Pillow releases the GIL while it decodes) and returns a
`Thumbnail` that the template reads only when it renders, by which time all of them have been decoding in
parallel.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tlearn.data.images import ImageDecodeError, load_rgb

THUMBNAIL_PIXELS = 160  # longest side

_pool: ThreadPoolExecutor | None = None


class Thumbnail:
    """A thumbnail being decoded: renders as its `data:` URI, and is false when the image could not be read.

    Example:
        >>> picture = thumbnail(Path("data/ants/0013035.jpg"))  # doctest: +SKIP
        >>> str(picture)[:23], bool(picture)  # doctest: +SKIP
        ('data:image/jpeg;base64,', True)
    """

    def __init__(self, future: Future[str | None]) -> None:
        self._future = future

    @property
    def uri(self) -> str | None:
        """The data URI, waiting for the decode if needed; None when the file can no longer be read."""
        return self._future.result()

    def __bool__(self) -> bool:
        return self.uri is not None

    def __str__(self) -> str:
        return self.uri or ""

    def __html__(self) -> str:
        """Jinja's autoescape inserts it as is: a base64 data URI holds nothing to escape."""
        return str(self)


def thumbnail(path: Path, *, pixels: int = THUMBNAIL_PIXELS) -> Thumbnail:
    """Start decoding a small JPEG of the image at `path`; see `Thumbnail`."""
    return Thumbnail(_threads().submit(thumbnail_uri, path, pixels))


def thumbnail_uri(path: Path, pixels: int = THUMBNAIL_PIXELS) -> str | None:
    """A small JPEG of the image as a data URI, or None when the file can no longer be read."""
    try:
        picture = load_rgb(path, draft_size=pixels)
    except ImageDecodeError:
        return None
    picture.thumbnail((pixels, pixels))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return data_uri(buffer.getvalue(), "image/jpeg")


def data_uri(payload: bytes, media_type: str) -> str:
    """`payload` inlined as a `data:` URI, for pages that must stand alone (the report, notebook output)."""
    return f"data:{media_type};base64,{base64.b64encode(payload).decode('ascii')}"


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _pool = ThreadPoolExecutor(max_workers=max(1, min(8, cores)), thread_name_prefix="tlearn-thumbnails")
    return _pool
