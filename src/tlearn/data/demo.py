"""The images of `tlearn demo`: a labelled image set drawn on the spot (no data, no internet needed).

Three classes of shapes — circles, squares, triangles — in random colours, sizes, positions and rotations,
on varied backgrounds (flat, gradients, noise, stripes), saved as JPEG and PNG. Deterministic for a seed,
so a second demo reuses the cached embeddings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEMO_CLASSES = ("circle", "square", "triangle")


def draw_dataset(folder: str | Path, *, per_class: int = 70, size: int = 160, seed: int = 0) -> Path:
    """Write `folder/<shape>/<n>.{jpg,png}` images; returns the folder. Existing files are overwritten.

    A labelled image set to try tlearn on without data of your own: `per_class` images of each of circles,
    squares and triangles, the same for a given seed.

    Example:
        >>> data = draw_dataset("shapes", per_class=20)  # doctest: +SKIP
        >>> run = tlearn.train(data, out="runs/shapes")  # doctest: +SKIP
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for shape in DEMO_CLASSES:
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            picture = _draw_one(shape, size, rng)
            suffix = "png" if index % 4 == 0 else "jpg"
            picture.save(folder / shape / f"{shape}_{index:03d}.{suffix}", quality=90)
    return folder


def _draw_one(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    picture = Image.fromarray(_background(size, rng))
    draw = ImageDraw.Draw(picture)
    radius = size * rng.uniform(0.15, 0.32)
    centre_x, centre_y = (rng.uniform(radius, size - radius) for _ in range(2))
    colour = tuple(int(value) for value in rng.integers(0, 256, 3))
    if shape == "circle":
        draw.ellipse([centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius], fill=colour)
    else:
        corners = 4 if shape == "square" else 3
        start = rng.uniform(0, 2 * math.pi)
        points = [
            (
                centre_x + radius * math.cos(start + 2 * math.pi * k / corners),
                centre_y + radius * math.sin(start + 2 * math.pi * k / corners),
            )
            for k in range(corners)
        ]
        draw.polygon(points, fill=colour)
    return picture


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8: a flat colour, a gradient, coloured noise or stripes."""
    kind = rng.integers(0, 4)
    base = rng.integers(0, 256, 3).astype(np.float32)
    if kind == 0:
        pixels = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == 1:
        other = rng.integers(0, 256, 3).astype(np.float32)
        ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        pixels = np.broadcast_to(base * (1 - ramp) + other * ramp, (size, size, 3)).copy()
        if rng.random() < 0.5:
            pixels = pixels.transpose(1, 0, 2)
    elif kind == 2:
        pixels = base + rng.normal(0, 40, (size, size, 3))
    else:
        period = rng.integers(8, 24)
        stripes = ((np.arange(size) // period) % 2).astype(np.float32)[:, None, None]
        pixels = np.broadcast_to(base * (0.6 + 0.4 * stripes), (size, size, 3)).copy()
    return np.clip(pixels, 0, 255).astype(np.uint8)
