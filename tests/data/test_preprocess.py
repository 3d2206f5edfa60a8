"""The torch-free eval preprocessing must match timm's eval transform pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform

from helpers import colour_image, jpeg_bytes
from tlearn.data.images import load_rgb
from tlearn.data.preprocess import EvalPreprocess, Preprocessing, normalize

CONFIGS = [
    Preprocessing((224, 224), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875, "center"),
    Preprocessing((299, 299), "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.95, "center"),
    Preprocessing((192, 256), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9, "center"),
    Preprocessing((224, 224), "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1.0, "squash"),
    Preprocessing((224, 224), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.95, "border"),
]


def _timm_transform(pre: Preprocessing):
    return create_transform(
        input_size=(3, *pre.input_size),
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
        crop_mode=pre.crop_mode,
    )


@pytest.mark.parametrize("pre", CONFIGS, ids=lambda p: f"{p.input_size}-{p.crop_mode}-{p.interpolation}")
@pytest.mark.parametrize("size", [(500, 375), (120, 333), (64, 64), (300, 90)])
def test_matches_timm_eval_transform(pre, size):
    picture = colour_image((10, 200, 30), size=max(size), seed=sum(size)).resize(size)
    expected = _timm_transform(pre)(picture).numpy()
    ours = normalize(EvalPreprocess(pre).from_picture(picture)[None], pre)[0]
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_large_jpeg_draft_decoding_stays_close():
    pre = CONFIGS[0]
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)).resize((2400, 1800), Image.BICUBIC)
    data = jpeg_bytes(smooth, quality=95)
    exact = normalize(EvalPreprocess(pre).from_picture(load_rgb(data))[None], pre)[0]
    fast = normalize(EvalPreprocess(pre).from_file(data)[None], pre)[0]
    assert np.abs(exact - fast).mean() < 0.02  # normalised units: under 1/100 of the value range


def test_round_trip_and_fingerprint():
    pre = CONFIGS[2]
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.fingerprint() != CONFIGS[0].fingerprint()
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing((224, 224), "magic", (0.5,) * 3, (0.5,) * 3, 0.9)
