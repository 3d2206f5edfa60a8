"""Decoding: every bad kind of file gets a reason; every colour mode becomes sensible RGB."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from helpers import colour_image, jpeg_bytes, png_with_size, write_broken_files
from tlearn.data.images import (
    ALLOWED_FORMATS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    is_hidden_name,
    is_image_name,
    load_rgb,
    to_rgb,
)


def test_each_broken_kind_gets_its_reason_and_is_left_untouched(tmp_path):
    expected = write_broken_files(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in expected}
    for name, word in expected.items():
        with pytest.raises(ImageDecodeError, match=word):
            load_rgb(tmp_path / name)
    assert {name: (tmp_path / name).read_bytes() for name in expected} == before


def test_pixel_limit_is_applied_before_decoding():
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        load_rgb(png_with_size(20_000, 20_000))
    picture = colour_image((1, 2, 3), size=40)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="1,600 > limit 1,000"):
        load_rgb(buffer.getvalue(), max_pixels=1000)
    assert load_rgb(buffer.getvalue(), max_pixels=1600).size == (40, 40)


def test_unreadable_path_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        load_rgb(tmp_path / "missing.jpg")


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    source = colour_image((200, 100, 50), size=32)
    grey = np.asarray(source.convert("L"))
    if mode == "I;16":
        picture = Image.fromarray(grey.astype(np.uint16) * 257)
        assert picture.mode == "I;16"
    else:
        picture = source.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format="TIFF")
    rgb = load_rgb(buffer.getvalue())
    assert rgb.mode == "RGB" and rgb.size == (32, 32)
    if mode in ("I;16", "L"):
        # 16-bit values are scaled down, not clipped to white.
        assert abs(float(np.asarray(rgb)[..., 0].mean()) - float(grey.mean())) <= 1


def test_transparency_is_composited_on_white():
    picture = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    assert np.asarray(load_rgb(buffer.getvalue())).min() == 255
    palette = Image.new("P", (8, 8), 0)
    palette.info["transparency"] = 0
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    assert np.asarray(load_rgb(buffer.getvalue())).min() == 255


def test_exif_orientation_is_applied():
    picture = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    rotated = load_rgb(jpeg_bytes(picture, exif=exif.tobytes()))
    assert rotated.size == (20, 40)


def test_first_frame_of_an_animation():
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(load_rgb(buffer.getvalue()))[..., 0].mean() > 200


def test_names():
    assert is_image_name("a/B.JPeG") and is_image_name("x.tiff") and is_image_name("x.webp")
    assert not is_image_name("notes.txt") and not is_image_name("model.safetensors")
    assert is_hidden_name(".DS_Store") and is_hidden_name("._photo.jpg") and not is_hidden_name("photo.jpg")


def test_only_the_listed_formats_are_decoded_and_each_extension_maps_to_one():
    registered = Image.registered_extensions()
    assert {registered[extension] for extension in IMAGE_EXTENSIONS} == set(ALLOWED_FORMATS)
    for image_format in ALLOWED_FORMATS:
        buffer = io.BytesIO()
        colour_image((10, 20, 30), size=16).save(buffer, format=image_format)
        assert load_rgb(buffer.getvalue()).size == (16, 16)


def test_camera_mpo_jpegs_are_drafted_like_jpegs():
    """Phones save multi-picture JPEGs, which Pillow calls MPO: they must get the fast draft decoding too."""
    picture = colour_image((200, 100, 50), size=64).resize((2048, 1536))
    buffer = io.BytesIO()
    picture.save(buffer, format="MPO", save_all=True, append_images=[picture.resize((64, 48))])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    assert load_rgb(buffer.getvalue(), draft_size=256).size == (512, 384)  # 1/4: 1/8 would leave 192 < 256


def test_sixteen_bit_and_float_are_scaled_in_bounded_memory():
    """No int64 (8 bytes a pixel) copy of the picture: the peak stays near the decoded values themselves."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65535, (1500, 2000), dtype=np.uint16)
    pictures = {
        "I;16": Image.fromarray(values),
        "I": Image.fromarray(values.astype(np.int32) * 30_000),  # peak beyond 16 bits
        "F": Image.fromarray(values.astype(np.float32) / 7.0),
    }
    for mode, picture in pictures.items():
        assert picture.mode == mode
        tracemalloc.start()
        rgb = to_rgb(picture)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        pixels = values.size
        assert peak < 4 * pixels + 16 * 2**20, f"{mode}: peak {peak / 2**20:.0f} MiB for {pixels / 1e6:.1f} MP"
        grey = np.asarray(rgb)[..., 0].astype(np.int64)
        expected = values.astype(np.int64) >> 8 if mode == "I;16" else values.astype(np.int64) * 255 // 65535
        assert np.abs(grey - expected).max() <= 1


def test_float_images_with_non_finite_values():
    values = np.array([[np.nan, -np.inf, 0.0], [0.5, 1.0, np.inf]], dtype=np.float32)
    grey = np.asarray(to_rgb(Image.fromarray(values, mode="F")))[..., 0]
    assert grey.tolist() == [[0, 0, 0], [127, 255, 255]]


def _grey(picture) -> list[int]:
    """The first row of an RGB picture as grey levels (R == G == B is checked)."""
    import numpy as np

    pixels = np.asarray(picture)
    assert (
        picture.mode == "RGB" and (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    )
    return pixels[0, :, 0].tolist()


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("I;16", [0, 32768, 65535], [0, 128, 255]),  # 16 bits: the top byte
        ("I", [0, 100, 200], [0, 100, 200]),  # 32-bit integers that fit 8 bits: as they are
        ("I", [0, 255], [0, 255]),  # ...up to 255 exactly
        ("I", [0, 256], [0, 1]),  # one more and it is a 16-bit picture
        ("I", [-5, 100], [0, 100]),  # negative values are black, not wrapped around
        ("I", [0, 512, 65535], [0, 2, 255]),  # ...that fit 16 bits: the top byte of 16
        ("I", [0, 70_000, 140_000], [0, 127, 255]),  # beyond 16 bits: scaled to the peak
        ("F", [-1.0, 0.0, 1.0], [0, 127, 255]),  # floats: their finite range stretched to 0-255
        ("F", [-1.0, float("nan"), float("inf"), 1.0], [0, 0, 255, 255]),  # NaN as the low end, +inf as the high
    ],
)
def test_high_bit_depth_pictures_are_scaled_to_8_bits_not_clipped(mode, values, expected):
    import numpy as np

    from tlearn.data.images import to_rgb

    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    picture = Image.fromarray(np.array([values], dtype=dtype), mode=mode if mode != "I;16" else None)
    assert picture.mode == mode
    assert _grey(to_rgb(picture)) == expected


def test_high_bit_depth_pictures_are_scaled_the_same_band_by_band(monkeypatch):
    """Large pictures are converted a band of rows at a time: the result must not depend on the band size."""
    import numpy as np

    from tlearn.data import images
    from tlearn.data.images import to_rgb

    values = np.arange(7 * 5, dtype=np.float32).reshape(7, 5) * 3.5 - 20
    values[3, 2] = np.nan
    whole = np.asarray(to_rgb(Image.fromarray(values, mode="F")))
    monkeypatch.setattr(images, "_ROWS_BUDGET", 10)  # two rows per band, the last band shorter
    banded = np.asarray(to_rgb(Image.fromarray(values, mode="F")))
    assert (banded == whole).all() and whole.min() == 0 and whole.max() >= 254  # float rounding may truncate 255
    ints = np.arange(7 * 5, dtype=np.int32).reshape(7, 5) * 4000  # peak 136,000: the scaled branch
    expected = (ints.astype(np.float32) * np.float32(255.0 / ints.max())).astype(np.uint8)
    assert (np.asarray(to_rgb(Image.fromarray(ints, mode="I")))[..., 0] == expected).all()
