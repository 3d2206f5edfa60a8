"""Models that answer with label sets or "unknown", made by hand from the session's tiny trained model.

The training side chooses thresholds and reject rules; these tests only need models that carry them. Each is
the `exported_model` fixture's weights with a rewritten config.json (and a `reject.safetensors` made from
the training images' embeddings), plus its verified ONNX export. Built once per test session (the first
module to ask builds them under pytest's base temporary folder; the others reuse them). The reference
figures (logits, embeddings) come from timm directly, never from the engines under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import colour_image

KNN_THRESHOLD = 0.6  # the tiny backbone's training-like images score > 0.75, a green square < 0.4 (k = 3)
TEMPERATURE = 2.0  # the multi-label models divide their logits by it (a forgotten division changes the answers)


@dataclass
class AnswerModels:
    data: Path  # red squares and blue circles (the classes the model knows)
    unseen: Path  # green squares: a colour and place the references never saw
    plain: Path  # the trained model directory, untouched
    multilabel: Path  # task multilabel, thresholds chosen so that some images get both labels
    knn: Path  # multiclass with a "knn" reject rule and its reject.safetensors
    multilabel_confidence: Path  # multilabel with a "confidence" reject rule
    multilabel_onnx: Path
    knn_onnx: Path


def reference_outputs(model_dir: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) logits and (N, D) pre-logits embeddings of `files`, straight from timm (no engine involved)."""
    import timm
    import torch
    from safetensors.torch import load_file

    from tlearn.data.preprocess import EvalPreprocess, normalize
    from tlearn.runs.model_dir import read_config

    config = read_config(model_dir)
    model = timm.create_model(config.arch, pretrained=False, num_classes=len(config.classes))
    model.load_state_dict(load_file(model_dir / "model.safetensors"))
    preprocessing = config.preprocessing_spec()
    pixels = np.stack([EvalPreprocess(preprocessing).from_file(path.read_bytes()) for path in files])
    with torch.no_grad():
        features = model.eval().forward_features(torch.from_numpy(normalize(pixels, preprocessing)))
        embeddings = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    return logits.numpy(), embeddings.numpy()


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def answer_models(exported_model, tmp_path_factory: pytest.TempPathFactory) -> AnswerModels:
    """The session's answer models (built on first use)."""
    root = tmp_path_factory.getbasetemp() / "answer-models"
    models = AnswerModels(
        data=exported_model.data,
        unseen=root / "unseen",
        plain=exported_model.run / "model",
        multilabel=root / "multilabel",
        knn=root / "knn",
        multilabel_confidence=root / "multilabel-confidence",
        multilabel_onnx=root / "multilabel.onnx",
        knn_onnx=root / "knn.onnx",
    )
    if not (root / "complete").exists():
        _build(models)
        (root / "complete").touch()
    return models


def _build(models: AnswerModels) -> None:
    from safetensors.numpy import load_file

    import tlearn
    from tlearn.engines.answers import REFERENCES_FILE, KnnReferences
    from tlearn.runs.model_dir import RejectRule, read_config, save_model

    models.unseen.mkdir(parents=True)
    for seed in range(4):
        colour_image((30, 200, 30), size=48, seed=700 + seed).save(models.unseen / f"green_{seed}.png")
    config = read_config(models.plain)
    state = load_file(models.plain / "model.safetensors")
    training = sorted(models.data.rglob("*.png"))
    logits, embeddings = reference_outputs(models.plain, training)
    # Each class's threshold is reached by 70% of the images (all of its own and some of the other class's):
    # images get one label or both. Each threshold sits midway between two images' probabilities.
    probabilities = np.sort(sigmoid(logits / TEMPERATURE), axis=0)  # (N, C), each column sorted
    cuts = [int(0.3 * len(training))] * len(config.classes)
    thresholds = [float(probabilities[cut - 1 : cut + 1, c].mean()) for c, cut in enumerate(cuts)]
    multilabel = config.model_copy(update={"task": "multilabel", "thresholds": thresholds, "temperature": TEMPERATURE})
    save_model(models.multilabel, state, multilabel)
    knn = config.model_copy(update={"reject": RejectRule(score="knn", threshold=KNN_THRESHOLD, k=3)})
    references = KnnReferences.from_embeddings(embeddings)
    save_model(models.knn, state, knn, extra_files={REFERENCES_FILE: references.to_bytes()})
    top = np.sort(sigmoid(logits / TEMPERATURE).max(axis=1))  # half the images fall below the threshold
    middle = len(top) // 2
    rule = RejectRule(score="confidence", threshold=float(top[middle - 1 : middle + 1].mean()))
    confident = multilabel.model_copy(update={"reject": rule})
    save_model(models.multilabel_confidence, state, confident)
    tlearn.export(models.multilabel, models.multilabel_onnx, check_data=models.data)
    tlearn.export(models.knn, models.knn_onnx, check_data=models.data)
