"""The reject rule of a run trained with `--reject`: its score, its threshold chosen on validation, and the
reference embeddings the "knn" score compares new images with.

The threshold is chosen on the validation images, scored the way the shipped model will score new images but
without having seen them: the linear head's validation answers are out-of-fold, and a validation image's
"knn" similarity leaves the image itself out of the references (train + val, saved with the model). For a
fine-tuned model the embeddings are the fine-tuned network's own (its classifier's input), computed once more
after training; for a linear model they are the cached frozen embeddings. A fine-tuned network refitted on
train + val has also learnt from the validation images, so they look a little more familiar than new images
will: its "knn" threshold errs towards rejecting more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.engines.answers import REFERENCES_FILE, KnnReferences, confidence
from tlearn.errors import TlearnError
from tlearn.evaluation.rejection import choose_threshold, selective_metrics
from tlearn.runs.model_dir import RejectRule
from tlearn.training.candidates import Candidate, PreparedData
from tlearn.training.context import TrainingContext
from tlearn.training.split_rows import joined

KNN_NEIGHBOURS = 5  # the k-th nearest training image: measured best of 1, 5, 10 on held-out classes
# Without a target, "knn" answers 95% of validation images (it says how unfamiliar an image is, not how likely
# the answer is right: a target accuracy made it reject 70-90% of known-class images on held-out classes of
# signs and mri, benchmarks/bench_unknown.py), "confidence" keeps 95% of answers right (DEFAULT_TARGET_ACCURACY).
DEFAULT_KNN_COVERAGE = 0.95


@dataclass
class FittedReject:
    """The rule to store in the model, the files it needs, its figures per evaluated split, a console line."""

    rule: RejectRule
    files: dict[str, bytes]
    metrics: dict[str, dict[str, Any]]
    summary_line: str


def fit_reject(context: TrainingContext, prepared: PreparedData, result: Candidate) -> FittedReject:
    """Choose the reject threshold on val for the shipped model and measure it on val and test.

    Example:
        >>> fitted = fit_reject(context, prepared, result)  # doctest: +SKIP
        >>> fitted.rule.threshold, fitted.metrics["val"]["coverage"]  # doctest: +SKIP
    """
    config = context.config
    correct = {
        split: result.probabilities[split].argmax(axis=1) == prepared.targets[split]
        for split in ("val", "test")
        if split in result.probabilities
    }
    files: dict[str, bytes] = {}
    if config.reject == "confidence":
        scores = {split: confidence(result.probabilities[split]) for split in correct}
    else:
        embeddings = _embeddings(context, prepared, result)
        final = KnnReferences.from_embeddings(joined([embeddings["train"], embeddings["val"]]), seed=config.seed)
        # A validation image is among the references the model ships with: its nearest one is itself, so it is
        # scored on the next k (leave-one-out), as a new image is scored on the same references. Choosing on
        # references without val instead set thresholds too low: new images, scored on more references,
        # scored higher (mri kept answering 95% of known test images at a target coverage of 80%).
        scores = {"val": final.similarity(embeddings["val"], KNN_NEIGHBOURS + 1)}
        if "test" in correct:
            scores["test"] = final.similarity(embeddings["test"], KNN_NEIGHBOURS)
        files[REFERENCES_FILE] = final.to_bytes()
    target_accuracy, target_coverage = config.target_accuracy, config.target_coverage
    if target_accuracy is None and target_coverage is None and config.reject == "knn":
        target_coverage = DEFAULT_KNN_COVERAGE
    threshold, target = choose_threshold(
        scores["val"], correct["val"], target_accuracy=target_accuracy, target_coverage=target_coverage
    )
    rule = RejectRule(score=config.reject, threshold=threshold, k=KNN_NEIGHBOURS, target=target)
    metrics = {split: selective_metrics(scores[split], correct[split], threshold, config.reject) for split in scores}
    val = metrics["val"]
    wanted = ", ".join(f"{key} {value:g}" for key, value in target.items())
    line = (
        f"reject ({config.reject}): threshold {threshold:.4g} chosen on val for {wanted}: answers "
        f"{val['coverage']:.0%} of val images"
    )
    if val["selective_accuracy"] is not None:
        line += f" with accuracy {val['selective_accuracy']:.3f} (all images: {val['accuracy_all']:.3f})"
    return FittedReject(rule, files, metrics, line)


def _embeddings(context: TrainingContext, prepared: PreparedData, result: Candidate) -> dict[str, np.ndarray]:
    """Per split, the embeddings the shipped model's classifier reads."""
    splits = [split for split in ("train", "val", "test") if len(prepared.targets[split])]
    if result.model_config.mode == "linear":
        return {split: prepared.features[split] for split in splits}
    paths = {split: prepared.files(split).paths for split in splits}
    vectors = _network_embeddings(context, result, [path for split in splits for path in paths[split]])
    offsets = np.cumsum([0] + [len(paths[split]) for split in splits])
    return {split: vectors[offsets[i] : offsets[i + 1]] for i, split in enumerate(splits)}


def _network_embeddings(context: TrainingContext, result: Candidate, paths: Sequence[Path]) -> np.ndarray:
    """The fine-tuned network's classifier inputs for these files (N, D), on the run's device."""
    from tlearn.engines.torch_engine import Classifier  # deferred: imports torch

    config = context.config
    engine = Classifier.from_state(result.state, result.model_config, device=config.device)
    embeddings, failures = engine.embed_files(paths, batch_size=config.batch_size, workers=config.workers)
    engine = None  # frees the network before the run is written
    if failures:
        position, reason = next(iter(failures.items()))
        raise TlearnError(f"{paths[position]}: became unreadable during training ({reason})")
    return embeddings
