"""Helpers shared by the tests: tiny generated image folders, broken files, the shared datasets' paths."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "datasets"
HYMENOPTERA = SHARED / "hymenoptera"
POOLS = SHARED / "pools"

needs_shared = pytest.mark.skipif(
    not HYMENOPTERA.is_dir(), reason=f"shared datasets not found at {SHARED} (../shared beside the project)"
)


def colour_image(rgb: tuple[int, int, int], *, size: int = 48, seed: int = 0, shape: str = "square") -> Image.Image:
    """A noisy background with a coloured shape: cheap, distinct, and different for each seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 166, (size, size, 3)).astype(np.uint8)
    low, high = size // 4, 3 * size // 4
    if shape == "square":
        pixels[low:high, low:high] = rgb
    else:
        yy, xx = np.mgrid[:size, :size]
        pixels[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2] = rgb
    return Image.fromarray(pixels)


def make_class_folder(root: Path, classes: dict[str, int], *, start: int = 0, size: int = 48) -> Path:
    """root/<class>/img_<n>.png, `count` images per class: red squares, blue circles, green squares..."""
    styles = [
        ((220, 30, 30), "square"),
        ((30, 30, 220), "circle"),
        ((30, 200, 30), "square"),
        ((230, 200, 20), "circle"),
    ]
    for index, (name, count) in enumerate(classes.items()):
        colour, shape = styles[index % len(styles)]
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(start, start + count):
            colour_image(colour, size=size, seed=1000 * index + n, shape=shape).save(root / name / f"img_{n:03d}.png")
    return root


def png_with_size(width: int, height: int) -> bytes:
    """A syntactically valid PNG header declaring huge dimensions (a decompression bomb, bytes only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(picture: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def write_broken_files(folder: Path) -> dict[str, str]:
    """Every kind of bad file; returns {file name: a word its skip reason must contain}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(colour_image((200, 40, 40), size=64, seed=99))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "not_an_image.png").write_text("<html>this is a web page saved as png</html>")
    (folder / "bomb.png").write_bytes(png_with_size(100_000, 100_000))
    return {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated",
        "not_an_image.png": "not an image",
        "bomb.png": "too many pixels",
    }


TINY_BACKBONE = "test_efficientnet"  # timm's 0.36M-parameter test network (160 x 160): export tests run in seconds


def tiny_backbone_weights(folder: Path) -> Path:
    """Seeded random weights for TINY_BACKBONE as a local file (no download; features still separate colours)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = folder / f"{TINY_BACKBONE}.safetensors"
    save_file(timm.create_model(TINY_BACKBONE, pretrained=False).state_dict(), path)
    return path


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    """Run `tlearn ARGS` in-process; returns (exit code, stdout, stderr)."""
    from tlearn.cli import main

    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served_model(model: Path) -> Iterator[str]:
    """`tlearn serve MODEL` as a real process on a free loopback port, ready; yields its URL, stops it after."""
    import httpx  # deferred: only the serving tests need it

    port = free_port()
    command = [sys.executable, "-m", "tlearn", "serve", str(model), "--port", str(port), "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not become ready in 60 s"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def edited_model_dir(exported_model, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the session's model directory with `edit(config)` applied to its config.json (NaN and
    Infinity are written as JSON allows)."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(exported_model.run / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def edited_onnx(exported_model, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the session's ONNX export with `edit(config)` applied to the config in its metadata."""
    import json

    import onnx

    from tlearn.engines.onnx_engine import CONFIG_KEY

    proto = onnx.load(str(exported_model.onnx))
    props = {prop.key: prop.value for prop in proto.metadata_props}
    config = json.loads(props[CONFIG_KEY])
    edit(config)
    onnx.helper.set_model_props(proto, {**props, CONFIG_KEY: json.dumps(config)})
    path = tmp_path / "edited.onnx"
    onnx.save(proto, str(path))
    return path
