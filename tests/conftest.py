"""Shared fixtures: tiny generated image folders, broken files, the shared datasets and an isolated cache."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def pytest_configure(config: pytest.Config) -> None:
    # One embedding cache for the whole session (backbone weights and embeddings are reused across tests),
    # never the user's own cache.
    cache = Path(config.rootpath) / ".pytest_cache" / "tlearn-cache"
    os.environ["TLEARN_CACHE_DIR"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for hub retries in tests


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


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Two well-separated classes, 16 images each (auto split)."""
    return make_class_folder(tmp_path / "data", {"red": 16, "blue": 16})


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's `chromium`) driven by Playwright; skipped where missing, except in CI."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if executable is None or sync_playwright is None:
        missing = "chromium (apt-get install chromium)" if executable is None else "playwright (pip install -e .[dev])"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need {missing}")
        pytest.skip(f"browser tests need {missing}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


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


@dataclass
class ExportedModel:
    data: Path  # red squares and blue circles, the model's training folder
    run: Path  # the run directory (model in run / "model")
    onnx: Path  # its verified fp32 ONNX export
    export: Any  # tlearn.export.ExportResult of that export


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """A tiny model trained once per session and exported to ONNX (shared by export, inference and serve tests)."""
    import tlearn
    from tlearn.export import export_model

    root = tmp_path_factory.mktemp("exported")
    data = make_class_folder(root / "data", {"red": 14, "blue": 14})
    run = tlearn.train(data, out=root / "run", backbone=TINY_BACKBONE, weights=tiny_backbone_weights(root), quiet=True)
    result = export_model(run.model_path, root / "model.onnx", check_data=data)
    return ExportedModel(data, run.path, result.path, result)
