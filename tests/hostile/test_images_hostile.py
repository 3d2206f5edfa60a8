"""Hostile image files: thin PNGs, other formats renamed .jpg, memory running out while decoding.

Each must become a one-line per-file reason before anything large is allocated and without starting any
external program, and running out of memory must never be remembered as a verdict on the file.
"""

from __future__ import annotations

import contextlib
import io
import resource
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import EpsImagePlugin, Image

from helpers import PROJECT, colour_image
from tlearn.data.decoding import DecodeTask, run_task
from tlearn.data.images import ImageDecodeError, ImageMemoryError, ImageShapeError, ImageTooLargeError, load_rgb
from tlearn.data.preprocess import EvalPreprocess, Preprocessing

LITE0 = Preprocessing((224, 224), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875)


def thin_png(width: int = 100_000, height: int = 1) -> bytes:
    """A 177-byte PNG of 100000x1 black pixels: well under the pixel limit, absurd once resized."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@contextlib.contextmanager
def at_most_2gb_more() -> Iterator[None]:
    """Cap this process's address space 2 GiB above its current size, so a regression raises MemoryError
    instead of having the machine's OOM killer end the test run."""
    status = Path("/proc/self/status").read_text().splitlines()
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + 2 * 2**30, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_thin_png_is_refused_with_its_aspect_ratio(tmp_path):
    data = thin_png()
    assert len(data) < 200
    with (
        at_most_2gb_more(),
        pytest.raises(ImageShapeError, match=r"100000x1 pixels: aspect ratio 100000:1 too extreme \(limit 50:1\)"),
    ):
        EvalPreprocess(LITE0).from_file(data)
    assert issubclass(ImageShapeError, ImageTooLargeError)  # the service answers 413
    # In memory too (predict on PIL images, uploads): refused before the resize allocates.
    with at_most_2gb_more(), pytest.raises(ImageShapeError, match="aspect ratio"):
        EvalPreprocess(LITE0).from_picture(Image.new("RGB", (100_000, 1)))
    (tmp_path / "thin.png").write_bytes(data)
    with at_most_2gb_more():
        batch = run_task(0, [tmp_path / "thin.png"], DecodeTask(LITE0))
    assert batch.failures == [(0, "100000x1 pixels: aspect ratio 100000:1 too extreme (limit 50:1)")]
    assert not batch.transient


def test_resized_size_beyond_the_pixel_limit_is_refused_before_resizing():
    prep = EvalPreprocess(LITE0, max_pixels=200_000, max_aspect_ratio=1000)
    assert prep.resized_size((8000, 200)) == (10240, 256)
    with pytest.raises(ImageShapeError, match=r"would be resized to 10240x256 \(over the limit of 200,000 pixels\)"):
        prep.from_picture(Image.new("RGB", (8000, 200)))
    assert prep.from_picture(Image.new("RGB", (600, 200))).shape == (224, 224, 3)  # 768x256: within the limit


def test_a_thin_png_never_allocates_much(tmp_path):
    """With 1.5 GB of address space the process must answer with the reason, not a MemoryError or a kill."""
    (tmp_path / "thin.png").write_bytes(thin_png())
    code = textwrap.dedent(
        f"""
        import resource
        from tlearn.data.decoding import DecodeTask, run_task
        from tlearn.data.preprocess import Preprocessing
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, resource.RLIM_INFINITY))
        pre = Preprocessing((224, 224), "bicubic", (0.5,) * 3, (0.5,) * 3, 0.875)
        print(run_task(0, [{str(tmp_path / "thin.png")!r}], DecodeTask(pre)).failures[0][1])
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, env={"OPENBLAS_NUM_THREADS": "1"}
    )
    assert completed.returncode == 0, completed.stderr[-1500:]
    assert "aspect ratio 100000:1 too extreme" in completed.stdout


def _eps_bytes() -> bytes:
    buffer = io.BytesIO()
    colour_image((200, 30, 30), size=32).save(buffer, format="EPS")
    return buffer.getvalue()


def test_eps_named_jpg_is_refused_and_ghostscript_never_starts(tmp_path, monkeypatch):
    started = []

    def no_ghostscript(*args, **kwargs):
        started.append(args)
        raise OSError("Ghostscript must never be started")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as if Ghostscript were installed
    path = tmp_path / "x.jpg"
    path.write_bytes(_eps_bytes())
    with pytest.raises(ImageDecodeError, match=r"not an image we read: looks like PostScript/EPS \(supported: JPEG"):
        load_rgb(path)
    batch = run_task(0, [path], DecodeTask(LITE0))
    assert batch.failures and "PostScript/EPS" in batch.failures[0][1]
    assert started == []


def test_psd_and_other_formats_renamed_jpg_are_refused_with_what_they_are():
    psd = b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + b"\x00\x00\x00\x10" * 2 + b"\x00\x08\x00\x03" + b"\x00" * 64
    with pytest.raises(ImageDecodeError, match="looks like Photoshop PSD"):
        load_rgb(psd)
    with pytest.raises(ImageDecodeError, match="looks like PDF"):
        load_rgb(b"%PDF-1.7\n" + b"\x00" * 64)
    buffer = io.BytesIO()
    colour_image((1, 2, 3), size=16).save(buffer, format="ICO")
    with pytest.raises(ImageDecodeError, match="looks like Windows icon"):
        load_rgb(buffer.getvalue())
    with pytest.raises(ImageDecodeError, match=r"^not an image \(format not recognised\)$"):
        load_rgb(b"<html>saved web page</html>")


def test_memory_running_out_is_a_transient_per_file_error(tmp_path, monkeypatch):
    good = io.BytesIO()
    colour_image((30, 200, 30), size=64).save(good, format="PNG")
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(good.getvalue())
    real_resize = Image.Image.resize

    def resize_failing_once(self, *args, **kwargs):
        if not getattr(resize_failing_once, "failed", False):
            resize_failing_once.failed = True
            raise MemoryError
        return real_resize(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize_failing_once)
    batch = run_task(0, [tmp_path / "a.png", tmp_path / "b.png"], DecodeTask(LITE0, hash_contents=True))
    assert batch.failures == [(0, "out of memory while resizing (not remembered: retried on the next run)")]
    assert batch.transient == {0} and batch.positions == [1]
    assert ImageMemoryError.transient and not ImageDecodeError.transient


def test_a_file_larger_than_any_image_is_refused_before_it_is_read(tmp_path):
    """A 700 MB (sparse) "photo" in a data folder is refused by its size: nothing of it is read into memory."""
    import tracemalloc

    from tlearn.data.images import (
        DEFAULT_MAX_IMAGE_PIXELS,
        MAX_FILE_BYTES,
        ImageTooLargeError,
        load_rgb,
        read_file_bytes,
    )

    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as handle:
        handle.truncate(700_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=r"file of 700,000,000 bytes: larger than any image tlearn reads"):
            load_rgb(huge)
        assert tracemalloc.get_traced_memory()[1] < 10_000_000
    finally:
        tracemalloc.stop()
    assert MAX_FILE_BYTES >= 3 * 2 * DEFAULT_MAX_IMAGE_PIXELS  # a 16-bit RGB TIFF at the pixel limit still fits
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 10)
    assert read_file_bytes(small, max_bytes=10) == b"x" * 10
    with pytest.raises(ImageTooLargeError, match="limit 9 bytes"):
        read_file_bytes(small, max_bytes=9)


def progressive_jpeg(repeats: int = 0, size: int = 300) -> bytes:
    """A progressive JPEG of noise (libjpeg's 10 scans), its last scan repeated `repeats` more times: the scan
    bomb, which costs a full pass over the picture per scan while adding only the scan's bytes."""
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last_scan = data[data.rfind(b"\xff\xda") : -2]  # up to the end-of-image marker
    return data[:-2] + last_scan * repeats + b"\xff\xd9"


@pytest.mark.parametrize("repeats, refused", [(0, False), (22, False), (23, True), (100, True)])
def test_a_progressive_jpeg_with_too_many_scans_is_refused_before_decoding(repeats, refused, monkeypatch):
    """10 scans of its own plus the repeats: 32 scans pass, 33 are a bomb, refused without decoding a pixel."""
    payload = progressive_jpeg(repeats)
    if not refused:
        assert load_rgb(payload).size == (300, 300)
        return
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    with pytest.raises(ImageTooLargeError, match=rf"progressive JPEG with {10 + repeats} scans \(limit 32;"):
        load_rgb(payload)
    assert decoded == []


def test_a_scan_bomb_in_a_training_folder_is_one_skipped_file(tmp_path):
    """Through the decoding pipeline the bomb is a per-file reason, and the good image beside it decodes."""
    (tmp_path / "bomb.jpg").write_bytes(progressive_jpeg(200))
    (tmp_path / "good.jpg").write_bytes(progressive_jpeg(0))
    batch = run_task(0, [tmp_path / "bomb.jpg", tmp_path / "good.jpg"], DecodeTask(LITE0))
    assert [(position, "210 scans" in reason) for position, reason in batch.failures] == [(0, True)]
    assert batch.positions == [1] and batch.pixels.shape == (1, 224, 224, 3) and not batch.transient


def slow_jpeg() -> bytes:
    """A 3000x3000 progressive JPEG of noise: about 0.25 CPU seconds of decoding on a 2-core EPYC."""
    return progressive_jpeg(0, size=3000)


def test_decoding_stops_once_the_file_has_taken_its_cpu_time():
    """The limit is checked between blocks of the file, so a decode stops close to it, whatever the decoder."""
    payload = slow_jpeg()
    assert load_rgb(payload).size == (3000, 3000)  # the default limit lets a large photo through
    started = time.thread_time()
    with pytest.raises(ImageTooLargeError, match=r"decoding took more than 0.02 CPU seconds") as refused:
        load_rgb(payload, max_cpu_seconds=0.02)
    assert time.thread_time() - started < 0.12  # stopped within a block of the limit, not after the whole file
    assert not refused.value.transient  # a lasting verdict: the next run refuses it without decoding


def test_the_decode_time_limit_holds_in_the_decoding_workers(tmp_path, monkeypatch):
    """Training and predict decode through `run_task`: the slow file is one per-file reason, its neighbour
    decodes."""
    monkeypatch.setattr("tlearn.data.images.MAX_DECODE_CPU_SECONDS", 0.02)
    (tmp_path / "slow.jpg").write_bytes(slow_jpeg())
    (tmp_path / "good.jpg").write_bytes(progressive_jpeg(0))
    batch = run_task(0, [tmp_path / "slow.jpg", tmp_path / "good.jpg"], DecodeTask(LITE0))
    assert [(position, "CPU seconds" in reason) for position, reason in batch.failures] == [(0, True)]
    assert batch.positions == [1] and not batch.transient
