"""The "before" view: ImageNet class names from timm's tables, answers equal to the original timm model's, and
the report's sample answers shaped once for training and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.data import ImageNetInfo

from helpers import colour_image
from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import StoredBackbone, resolve_backbone
from tlearn.data.preprocess import EvalPreprocess, normalize
from tlearn.engines.imagenet import (
    BEFORE_AFTER_SAMPLES,
    imagenet_class_names,
    imagenet_predictions,
    imagenet_samples,
    imagenet_top_k,
)
from tlearn.errors import BackboneError, DataError
from tlearn.util.numeric import softmax
from tlearn.util.progress import Progress


def test_class_names_are_timms():
    names = imagenet_class_names()
    info = ImageNetInfo()
    assert len(names) == 1000 and names == [info.index_to_description(index) for index in range(1000)]


def test_answers_equal_the_original_timm_model(tmp_path):
    paths = []
    for seed, (colour, shape) in enumerate([((220, 30, 30), "square"), ((30, 30, 220), "circle")]):
        paths.append(tmp_path / f"image_{seed}.png")
        colour_image(colour, size=96, seed=seed, shape=shape).save(paths[-1])
    ref = resolve_backbone("lite0")
    answers = imagenet_top_k(ref.describe(), paths, k=3)

    FeatureExtractor(ref, cache_root()).info(Progress(quiet=True))  # stores the backbone if this cache lacks it
    stored = StoredBackbone(cache_root(), ref.key)
    model = timm.create_model(ref.arch, pretrained=False, num_classes=stored.info().pretrained_classes).eval()
    model.load_state_dict({name: torch.from_numpy(value) for name, value in stored.weights().items()})
    prep = EvalPreprocess(stored.info().preprocessing)
    batch = normalize(np.stack([prep.from_file(path) for path in paths]), stored.info().preprocessing)  # (B, 3, H, W)
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch)).numpy()
    expected = softmax(logits)
    for answer, row in zip(answers, expected, strict=True):
        best = np.argsort(-row)[:3]
        assert [name for name, _ in answer] == [imagenet_class_names()[index] for index in best]
        assert [score for _, score in answer] == pytest.approx(row[best].tolist(), abs=1e-4)


def test_imagenet_predictions_are_the_named_top_k_and_report_unreadable_files(tmp_path):
    image = tmp_path / "red.png"
    colour_image((220, 30, 30), size=96, seed=0).save(image)
    answer, missing = imagenet_predictions([image, tmp_path / "missing.jpg"], backbone="lite0", top_k=2, quiet=True)
    expected = imagenet_top_k(resolve_backbone("lite0").describe(), [image], k=2)[0]
    assert answer.labels == [name for name, _ in expected] and answer.error is None
    assert answer.probabilities == pytest.approx([score for _, score in expected], abs=1e-6)  # batch of 2 vs 1
    assert missing.labels == [] and "cannot read" in missing.error


def test_sample_answers_are_for_the_report_samples_and_a_refusal_is_their_reason():
    rows = [{"path": f"{label}/{index}.png", "label": label} for label in ("ants", "bees") for index in range(6)]
    asked: list[list[str]] = []

    def answers_for(paths: list[str]) -> list[list[tuple[str, float]]]:
        asked.append(paths)
        return [[] if path == "bees/1.png" else [(f"about {path}", 0.5)] for path in paths]  # one unreadable

    saved = imagenet_samples(list(reversed(rows)), answers_for)
    # The report's samples (`sample_rows`): each class in turn, in path order, whatever order the rows came in.
    assert asked == [[f"{label}/{index}.png" for index in range(4) for label in ("ants", "bees")]]
    assert len(asked[0]) == BEFORE_AFTER_SAMPLES
    assert saved == {"answers": {path: [(f"about {path}", 0.5)] for path in asked[0] if path != "bees/1.png"}}
    for error in (BackboneError("backbone x: its classifier has 11 classes"), DataError("cache: unreadable")):

        def refused(paths: list[str], error: Exception = error) -> list:
            raise error

        assert imagenet_samples(rows, refused) == {"reason": str(error)}
