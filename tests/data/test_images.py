"""Decoding: every bad kind of file gets a reason; every colour mode becomes sensible RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import colour_image, jpeg_bytes, png_with_size, write_broken_files
from tlearn.data.images import ImageDecodeError, is_hidden_name, is_image_name, load_rgb


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
