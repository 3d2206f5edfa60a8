"""Training images: decoded once at a bounded size, augmented each epoch, the same through files or memory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import colour_image
from tlearn.backbones.registry import EMBEDDED
from tlearn.errors import TlearnError
from tlearn.training.train_images import (
    MAX_STORED_ASPECT,
    StoredFit,
    TrainImages,
    decode_for_training,
    train_transform,
)

LITE0 = EMBEDDED["tf_efficientnet_lite0"].preprocessing  # bicubic, like most timm backbones


@pytest.mark.parametrize("augment", ["basic", "trivial", "none"])
def test_every_augmentation_turns_a_stored_image_into_a_training_crop(augment):
    torch.manual_seed(0)
    transform = train_transform(LITE0, size=96, augment=augment)
    image = torch.from_numpy(np.array(colour_image((200, 40, 40), size=130))).permute(2, 0, 1).contiguous()
    crops = [transform(image) for _ in range(4)]
    assert all(crop.shape == (3, 96, 96) and crop.dtype == torch.uint8 for crop in crops)
    if augment != "none":
        assert any(not torch.equal(crops[0], crop) for crop in crops[1:])  # random each time


def test_decoded_size_is_bounded_whatever_the_picture(tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1000, 100), (10, 200, 10)).save(wide)
    pixels = decode_for_training(wide, 64, max_pixels=10**8)
    assert pixels.shape == (64, int(MAX_STORED_ASPECT * 64), 3) and pixels.flags.writeable


def test_training_pictures_are_fitted_as_the_evaluation_fits_them(tmp_path):
    """Fine-tuning crops from what the evaluation's crop mode keeps: the whole picture under squash and border
    (both edges of a 2:1 picture survive), the centre under the default crop."""
    wide = tmp_path / "wide.png"
    pixels = np.full((50, 100, 3), 128, dtype=np.uint8)
    pixels[:, :10], pixels[:, -10:] = (250, 0, 0), (0, 0, 250)
    Image.fromarray(pixels).save(wide)
    squashed = decode_for_training(wide, 64, 10**8, StoredFit("squash"))
    bordered = decode_for_training(wide, 64, 10**8, StoredFit.of(replace(LITE0, crop_mode="border")))
    assert squashed.shape == bordered.shape == (64, 64, 3)
    for fitted in (squashed, bordered):
        assert fitted[32, 1, 0] > 200 and fitted[32, -2, 2] > 200  # red left edge, blue right edge kept
    fill = tuple(round(255 * value) for value in LITE0.mean)
    assert tuple(bordered[0, 32]) == fill and tuple(bordered[-1, 32]) == fill  # padded above and below
    assert squashed[0, 32, 0] == squashed[0, 32, 2]  # squash stretches the picture: no padding rows
    centred = decode_for_training(wide, 64, 10**8)
    assert centred.shape == (64, 128, 3)  # the whole width kept for the random crop, as before


def test_memory_and_files_give_the_same_images(tmp_path):
    paths = []
    for n in range(6):
        path = tmp_path / f"{n}.png"
        colour_image((30 * n, 90, 200), size=80, seed=n).save(path)
        paths.append(path)
    labels = np.arange(6) % 2
    identity = train_transform(LITE0, size=64, augment="none")
    in_memory = TrainImages(paths, labels, identity, shorter_side=74, workers=0, max_pixels=10**8)
    from_files = TrainImages(paths, labels, identity, shorter_side=74, workers=0, max_pixels=10**8, memory_limit=0)
    assert in_memory.in_memory and not from_files.in_memory
    torch.manual_seed(1)
    first = [in_memory[i] for i in range(6)]
    torch.manual_seed(1)
    second = [from_files[i] for i in range(6)]
    for (a, label_a), (b, label_b) in zip(first, second, strict=True):
        assert torch.equal(a, b) and label_a == label_b


def test_a_file_broken_since_the_embedding_is_a_clear_error(tmp_path):
    path = tmp_path / "gone.png"
    path.write_bytes(b"not an image any more")
    with pytest.raises(TlearnError, match=r"gone\.png: became unreadable during training"):
        TrainImages(
            [path],
            np.zeros(1, int),
            train_transform(LITE0, size=64, augment="none"),
            shorter_side=74,
            workers=0,
            max_pixels=10**8,
        )
