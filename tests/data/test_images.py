"""Decoding: every bad kind of file gets a reason; every colour mode becomes sensible RGB.

A refusal is one whole line in a data report or an HTTP answer, so the tests below compare reasons whole: a
reason that loses the count, the limit or the list of formats we read goes red.
"""

from __future__ import annotations

import io
import os
import re
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from helpers import colour_image, jpeg_bytes, png_with_size, write_broken_files
from tlearn.data import images
from tlearn.data.images import (
    ALLOWED_FORMATS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageMemoryError,
    ImageShapeError,
    ImageTooLargeError,
    check_aspect_ratio,
    declared_size,
    is_hidden_name,
    is_image_name,
    load_rgb,
    read_file_bytes,
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


@pytest.mark.parametrize(("mode", "key"), [("RGB", (255, 0, 0)), ("L", 40)])
def test_a_png_colour_key_is_white_where_the_key_colour_is_and_untouched_elsewhere(mode, key):
    """A tRNS chunk makes one colour transparent in an RGB or greyscale PNG (no alpha channel)."""
    picture = Image.new(mode, (8, 8), key)
    other = (0, 0, 255) if mode == "RGB" else 90
    picture.paste(other, (0, 0, 4, 8))  # left half another colour, right half the key
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", transparency=key)
    pixels = np.asarray(load_rgb(buffer.getvalue()))
    assert (pixels[:, 4:] == 255).all()
    assert (pixels[:, :4] == np.asarray(Image.new(mode, (1, 1), other).convert("RGB"))[0, 0]).all()


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


def _not_ours(kind: str) -> str:
    """The reason for a file of a format we do not decode, naming the ones we do."""
    return f"not an image we read: looks like {kind} (supported: JPEG, PNG, BMP, GIF, WEBP, TIFF)"


def _reason(source: bytes | Path, **options) -> str:
    """The one-line reason `load_rgb` gives for refusing this file."""
    with pytest.raises(ImageDecodeError) as refused:
        load_rgb(source, **options)
    return str(refused.value)


def _png(width: int, height: int, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_bomb_that_pillow_refuses_is_told_by_its_pixel_count_and_the_limit_that_refused_it(monkeypatch):
    """Pillow refuses anything over twice its MAX_IMAGE_PIXELS itself; the reason still names the limit that
    applies: tlearn's (the one the user can change), or Pillow's where the user's limit is higher."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000_000)  # Pillow refuses over 100,000,000 pixels
    bomb = png_with_size(20_000, 20_000)  # 400,000,000 pixels, in 70 bytes
    assert _reason(bomb) == "too many pixels (400,000,000 > limit 89,478,485; possible decompression bomb)"
    assert _reason(bomb, max_pixels=399_999_999) == (
        "too many pixels (400,000,000 > limit 399,999,999; possible decompression bomb)"
    )
    for max_pixels in (400_000_000, 10**9):  # tlearn would take it: Pillow's limit refused it
        assert _reason(bomb, max_pixels=max_pixels) == (
            "too many pixels (400,000,000 > Pillow's limit 100,000,000; possible decompression bomb)"
        )
    with pytest.raises(ImageTooLargeError):  # the service answers 413, never "retry"
        load_rgb(bomb)


def test_a_picture_over_the_pixel_limit_is_told_by_its_size_and_count_and_warns_nothing():
    """Between tlearn's limit and twice Pillow's, Pillow opens the file with a warning: tlearn's own reason
    is the only word about it (a warning turned into an error here would fail the test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _reason(png_with_size(12_000, 10_000)) == (
            "too many pixels (12000x10000 = 120,000,000 > limit 89,478,485; possible decompression bomb)"
        )


def test_a_bomb_refusal_worded_differently_by_pillow_still_names_the_limit(monkeypatch):
    """A Pillow whose message carries no pixel count: the reason says "more than" Pillow's threshold."""

    def refuse(size):
        raise Image.DecompressionBombError("Image size exceeds limit, could be decompression bomb DOS attack.")

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000_000)
    monkeypatch.setattr(Image, "_decompression_bomb_check", refuse)
    assert _reason(_png(8, 8)) == (
        "too many pixels (more than 100,000,000 > limit 89,478,485; possible decompression bomb)"
    )


@pytest.mark.parametrize(
    "head, reason",
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", _not_ours("HEIC/AVIF")),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", _not_ours("HEIC/AVIF")),
        (b"\n  <svg xmlns='http://www.w3.org/2000/svg'/>", _not_ours("SVG")),
        (b"%PDF-1.7\n", _not_ours("PDF")),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "not an image (format not recognised)"),  # MP4 video
        (b"\x00\x00\x00\x00\x00\x00\x00\x00heic", "not an image (format not recognised)"),  # a brand, no ftyp box
    ],
    ids=["heic", "avif", "svg-after-blank-lines", "pdf", "mp4", "brand-without-ftyp"],
)
def test_a_file_in_a_format_we_do_not_read_is_named_with_the_formats_we_do(head, reason):
    assert _reason(head + b"\x00" * 64) == reason


def test_declared_size_reads_only_headers_of_the_formats_we_decode():
    """The service sizes a request from its images' headers before decoding any: a 120 MP header gives its
    size (quietly: no decompression-bomb warning in the log), anything we would not decode gives None."""
    assert declared_size(_png(64, 48, "RGB")) == (64, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert declared_size(png_with_size(12_000, 10_000)) == (12_000, 10_000)
    eps = io.BytesIO()
    colour_image((200, 30, 30), size=16).save(eps, format="EPS")
    assert Image.open(io.BytesIO(eps.getvalue())).size == (16, 16)  # Pillow itself would read it...
    assert declared_size(eps.getvalue()) is None  # ...but EPS is no format of ours
    assert declared_size(b"<html>saved web page</html>") is None
    assert declared_size(b"") is None


def test_the_shape_limits_name_the_missing_side_or_the_ratio_and_allow_the_limit_itself():
    for size in ((0, 10), (10, 0)):
        with pytest.raises(ImageShapeError) as refused:
            check_aspect_ratio(size)
        assert str(refused.value) == f"{size[0]}x{size[1]} pixels: an image needs both sides"
    check_aspect_ratio((500, 10))  # exactly 50:1 is allowed
    check_aspect_ratio((10, 500))
    with pytest.raises(ImageShapeError) as refused:
        check_aspect_ratio((10, 600))
    assert str(refused.value) == "10x600 pixels: aspect ratio 60:1 too extreme (limit 50:1)"
    # Through load_rgb, with the caller's limit.
    assert load_rgb(_png(500, 10)).size == (500, 10)
    assert _reason(_png(600, 10)) == "600x10 pixels: aspect ratio 60:1 too extreme (limit 50:1)"
    assert load_rgb(_png(600, 10), max_aspect_ratio=60).size == (600, 10)
    assert _reason(_png(600, 10), max_aspect_ratio=2.5) == "600x10 pixels: aspect ratio 60:1 too extreme (limit 2.5:1)"


def _progressive_jpeg(scans_more: int) -> bytes:
    """A small progressive JPEG (libjpeg's 10 scans) with its last scan repeated `scans_more` times."""
    buffer = io.BytesIO()
    colour_image((200, 100, 50), size=32).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan = data[data.rfind(b"\xff\xda") : -2]
    return data[:-2] + last_scan * scans_more + b"\xff\xd9"


def test_a_scan_bomb_reason_is_one_whole_line_with_the_count_and_the_limit():
    assert load_rgb(_progressive_jpeg(22)).size == (32, 32)  # 32 scans: at the limit
    assert _reason(_progressive_jpeg(23)) == (
        "progressive JPEG with 33 scans (limit 32; every scan decodes the whole picture again: "
        "possible decompression bomb)"
    )


def test_an_empty_file_or_upload_is_refused_as_empty_and_an_upload_decodes_from_its_file_object(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    for source in (b"", tmp_path / "empty.jpg", io.BytesIO(b"")):
        assert _reason(source) == "empty file (0 bytes)"
    assert load_rgb(io.BytesIO(_png(12, 8))).size == (12, 8)


def test_only_progressive_jpegs_are_counted_for_scans_not_a_multi_picture_jpeg_with_many_pictures():
    """A camera's MPO holds a baseline picture per frame, each with its scan: 40 of them are no scan bomb."""
    frames = [colour_image((200, 100, 50), size=16, seed=seed) for seed in range(40)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    assert buffer.getvalue().count(b"\xff\xda") >= 40
    assert load_rgb(buffer.getvalue()).size == (16, 16)


def test_a_malformed_header_is_a_corrupt_image_with_the_decoders_own_words():
    png = _png(16, 16)
    no_ihdr = png[:8] + b"\x00\x00\x00\x00" + png[12:]  # the IHDR chunk declares 0 bytes
    assert re.fullmatch(r"corrupt image \(ValueError: .*IHDR.*\)", _reason(no_ihdr))


def test_an_unreadable_file_is_named_by_the_systems_reason_alone(tmp_path):
    assert _reason(tmp_path / "missing.jpg") == "cannot read file (No such file or directory)"
    assert _reason(tmp_path) == "cannot read file (Is a directory)"


def test_the_size_in_a_too_large_reason_is_the_files_own_or_what_was_read_of_it(tmp_path, monkeypatch):
    small = tmp_path / "three.jpg"
    small.write_bytes(b"abc")
    with pytest.raises(ImageTooLargeError) as refused:
        read_file_bytes(small, max_bytes=2)
    assert str(refused.value) == "file of 3 bytes: larger than any image tlearn reads (limit 2 bytes)"
    # A file whose size says nothing (a /proc file reports 0 bytes): refused by what was read, one byte past
    # the limit and no more, "or more".
    status = Path("/proc/self/status")
    if status.exists():
        with pytest.raises(ImageTooLargeError) as refused:
            read_file_bytes(status, max_bytes=10)
        assert str(refused.value) == "file of 11 bytes or more: larger than any image tlearn reads (limit 10 bytes)"
    # A file that grew after its size was looked at (its size then was exactly the limit).
    grown = tmp_path / "grown.jpg"
    grown.write_bytes(b"x" * 20)
    real_fstat = os.fstat

    def fstat_before_it_grew(descriptor):
        result = real_fstat(descriptor)
        return os.stat_result((*result[:6], 10, *result[7:]))  # st_size is the 7th field

    monkeypatch.setattr(os, "fstat", fstat_before_it_grew)
    with pytest.raises(ImageTooLargeError) as refused:
        read_file_bytes(grown, max_bytes=10)
    assert str(refused.value) == "file of 11 bytes or more: larger than any image tlearn reads (limit 10 bytes)"


def test_memory_running_out_while_reading_a_file_is_transient(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(_png(8, 8))

    class NoMemoryFile(io.FileIO):
        def read(self, size=-1):
            raise MemoryError

    monkeypatch.setattr(images, "open", lambda file, mode: NoMemoryFile(file, mode), raising=False)
    with pytest.raises(ImageMemoryError) as refused:
        load_rgb(path)
    assert str(refused.value) == "out of memory while reading the file (not remembered: retried on the next run)"
    assert refused.value.transient


def test_memory_running_out_while_decoding_is_transient(monkeypatch):
    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_memory)
    with pytest.raises(ImageMemoryError) as refused:
        load_rgb(_png(8, 8))
    assert str(refused.value) == "out of memory while decoding (not remembered: retried on the next run)"
    assert refused.value.transient


def test_a_dark_float_picture_is_stretched_to_the_full_grey_range():
    """Values between 0 and 0.25 (a dark float TIFF) span black to white, as wider ranges do."""
    values = np.array([[0.0, 0.125, 0.25]], dtype=np.float32)
    assert _grey(to_rgb(Image.fromarray(values, mode="F"))) == [0, 127, 255]


def test_a_flat_float_picture_is_one_grey_level_whatever_its_infinities():
    """No range to stretch: every pixel, +inf and NaN included, is the low end (black), not noise or white."""
    values = np.array([[0.5, 0.5, np.inf, np.nan, -np.inf]], dtype=np.float32)
    assert _grey(to_rgb(Image.fromarray(values, mode="F"))) == [0, 0, 0, 0, 0]


def test_a_float_picture_without_a_finite_value_shows_its_infinities_as_black_and_white():
    values = np.array([[np.nan, np.inf, -np.inf]], dtype=np.float32)
    assert _grey(to_rgb(Image.fromarray(values, mode="F"))) == [0, 255, 0]


@pytest.mark.parametrize("mode, value, grey", [("I;16", 65535, 255), ("I;16", 32768, 128), ("I", 200, 200)])
def test_a_one_pixel_high_bit_depth_picture_keeps_its_grey_level(mode, value, grey):
    dtype = np.uint16 if mode == "I;16" else np.int32
    picture = Image.fromarray(np.array([[value]], dtype=dtype))
    assert picture.mode == mode
    assert _grey(to_rgb(picture)) == [grey]


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_a_high_bit_depth_picture_without_pixels_becomes_an_empty_rgb_picture(mode):
    rgb = to_rgb(Image.new(mode, (0, 0)))
    assert rgb.mode == "RGB" and rgb.size == (0, 0)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([-300, 512, 65535], [0, 2, 255]),  # within 16 bits: the top byte, negative values black (not wrapped)
        ([0, 32768, 65536], [0, 127, 255]),  # one above 16 bits: scaled to the peak
        ([-70_000, 0, 140_000], [0, 0, 255]),  # ...and negative values black there too
    ],
)
def test_32_bit_integer_pictures_are_black_below_zero_and_scaled_to_their_peak_beyond_16_bits(values, expected):
    assert _grey(to_rgb(Image.fromarray(np.array([values], dtype=np.int32), mode="I"))) == expected
