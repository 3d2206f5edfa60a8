"""The training-time image transform (torchvision.transforms.v2), the counterpart of `EvalPreprocess`."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from tlearn.data.preprocess import Preprocessing

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}


def train_transform(preprocessing: Preprocessing, *, augment: str = "trivial") -> v2.Compose:
    """PIL RGB picture → normalised (3, H, W) float tensor with random augmentation.

    Args:
        preprocessing: the backbone's input size, interpolation and normalisation.
        augment: "trivial" (random resized crop, flip, TrivialAugmentWide), "basic" (crop, flip, mild colour
            jitter) or "none" (a random crop at the evaluation scale only).
    """
    interpolation = _INTERPOLATION[preprocessing.interpolation]
    size = list(preprocessing.input_size)
    if augment == "none":
        steps = [
            v2.Resize(min(preprocessing.scale_size), interpolation=interpolation, antialias=True),
            v2.RandomCrop(size),
        ]
    else:
        steps = [
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if augment == "trivial":
            steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
        else:
            steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    steps += [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std)),
    ]
    return v2.Compose(steps)
