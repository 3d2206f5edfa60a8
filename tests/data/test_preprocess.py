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


def test_a_new_decoder_version_changes_the_fingerprint(monkeypatch):
    """Pixels that change with a decoder fix are never served from the embeddings of the old pixels."""
    from tlearn.data import preprocess

    before = CONFIGS[0].fingerprint()
    monkeypatch.setattr(preprocess, "DECODER_VERSION", preprocess.DECODER_VERSION + 1)
    assert CONFIGS[0].fingerprint() != before


def test_round_trip_and_fingerprint():
    pre = CONFIGS[2]
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.fingerprint() != CONFIGS[0].fingerprint()
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing((224, 224), "magic", (0.5,) * 3, (0.5,) * 3, 0.9)


def test_jpeg_draft_decoding_stops_just_above_the_resize_target():
    """DCT scaling goes down to the smallest size covering 1.15x the resize target (not twice it, as before)."""
    pre = CONFIGS[0]  # resize to 256 before the 224 crop
    prep = EvalPreprocess(pre)
    assert prep.draft_size == 295
    drafted_sizes = {}
    for size in ((4000, 3000), (3264, 2448), (1500, 2000), (512, 512)):
        photo = jpeg_bytes(colour_image((10, 200, 30), size=40).resize(size), quality=90)
        drafted_sizes[size] = load_rgb(photo, draft_size=prep.draft_size).size
    assert drafted_sizes == {
        (4000, 3000): (500, 375),  # 12 MP at 1/8, then resized 1.46x to 256
        (3264, 2448): (408, 306),  # 8 MP at 1/8 too
        (1500, 2000): (375, 500),  # 1/4, portrait
        (512, 512): (512, 512),  # not to 256: the resize would have nothing left to do
    }


def test_large_png_is_reduced_before_resampling_and_stays_close(monkeypatch):
    pre = CONFIGS[0]
    factors = []
    real_reduce = Image.Image.reduce

    def spy(self, factor, box=None):
        factors.append(factor)
        return real_reduce(self, factor, box)

    monkeypatch.setattr(Image.Image, "reduce", spy)
    rng = np.random.default_rng(1)
    smooth = Image.fromarray(rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)).resize((3200, 2400), Image.BICUBIC)
    exact_picture = smooth.resize(EvalPreprocess(pre).resized_size(smooth.size), Image.BICUBIC)
    exact = normalize(EvalPreprocess(pre).from_picture(exact_picture)[None], pre)[0]
    factors.clear()
    reduced = normalize(EvalPreprocess(pre).from_picture(smooth)[None], pre)[0]
    assert factors == [(3, 3)]  # 3200x2400 → 1066x800 by box averaging, then bicubic to 341x256
    assert np.abs(exact - reduced).mean() < 0.01  # normalised units
    factors.clear()
    EvalPreprocess(pre).from_picture(smooth.resize((500, 375)))
    assert factors == []  # small pictures: exactly timm's resize (see test_matches_timm_eval_transform)
