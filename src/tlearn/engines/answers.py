"""How a model's outputs become answers: a label set for a multi-label model, "unknown" under a reject rule.

Training (which chooses the thresholds) and every engine (which applies them) share these functions, so an
answer never depends on where the model runs. NumPy and safetensors only.

The "knn" reject score is the cosine similarity between an image's embedding and its k-th nearest training
embedding, both standardised by the training embeddings' mean and spread. Measured on held-out classes of
the shared data sets with Lite0's frozen embeddings (benchmarks/bench_unknown.py), it separates never-taught
images better than the top class's probability, which a linear head gives confidently to whatever looks a
little like a known class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy_safetensors
from safetensors.numpy import save as save_numpy_safetensors

from tlearn.errors import ModelFileError
from tlearn.runs.model_dir import REFERENCES_FILE, ModelConfig, RejectRule

UNKNOWN = "unknown"  # the answer of a model that rejects an image
REFERENCE_LIMIT = 5000  # training embeddings kept (a stratified-free random sample beyond): 12.8 MB at 1280-D
SIMILARITY_CHUNK = 1024  # images compared with the references at a time (bounded memory on any batch)


@dataclass(frozen=True)
class KnnReferences:
    """Training embeddings for the "knn" score: the standardisation and the unit-length standardised rows."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    vectors: np.ndarray  # (N, D) float32, unit rows

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, *, limit: int = REFERENCE_LIMIT, seed: int = 0) -> KnnReferences:
        """References from training embeddings (N, D); beyond `limit` rows, a seeded random sample of them."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if len(embeddings) > limit:
            rows = np.sort(np.random.default_rng(seed).choice(len(embeddings), size=limit, replace=False))
            embeddings = embeddings[rows]
        mean = embeddings.mean(axis=0)
        scale = embeddings.std(axis=0)
        scale[scale < 1e-6] = 1.0
        return cls(mean, scale, _unit_rows((embeddings - mean) / scale))

    def similarity(self, embeddings: np.ndarray, k: int) -> np.ndarray:
        """(N,) cosine similarity of each embedding to its k-th nearest reference (higher: more familiar)."""
        k = max(1, min(k, len(self.vectors)))
        scores = np.empty(len(embeddings), dtype=np.float32)
        for start in range(0, len(embeddings), SIMILARITY_CHUNK):
            chunk = np.asarray(embeddings[start : start + SIMILARITY_CHUNK], dtype=np.float32)
            similarities = _unit_rows((chunk - self.mean) / self.scale) @ self.vectors.T
            scores[start : start + len(chunk)] = np.partition(similarities, -k, axis=1)[:, -k]
        return scores

    def to_bytes(self) -> bytes:
        """The safetensors payload of `REFERENCES_FILE` (vectors in float16: half the size, scores to ~1e-3)."""
        arrays = {"mean": self.mean, "scale": self.scale, "vectors": self.vectors.astype(np.float16)}
        return save_numpy_safetensors({name: np.ascontiguousarray(value) for name, value in arrays.items()})

    @classmethod
    def from_bytes(cls, payload: bytes, where: str) -> KnnReferences:
        """Parse `REFERENCES_FILE` (safetensors: no code runs).

        Raises:
            ModelFileError: unreadable, or arrays missing or of mismatched shapes.
        """
        try:
            arrays = load_numpy_safetensors(payload)
            mean, scale, vectors = (arrays[name].astype(np.float32) for name in ("mean", "scale", "vectors"))
        except (SafetensorError, KeyError, ValueError) as error:
            raise ModelFileError(f"{where}: unreadable reject references ({error})") from None
        if mean.ndim != 1 or scale.shape != mean.shape or vectors.ndim != 2 or vectors.shape[1] != mean.shape[0]:
            raise ModelFileError(f"{where}: reject references of mismatched shapes; train the model again")
        if not len(vectors) or not np.isfinite(vectors).all() or not (scale > 0).all():
            raise ModelFileError(f"{where}: reject references are empty or not finite; train the model again")
        return cls(mean, scale, vectors)


def read_references(folder: Path, config: ModelConfig) -> KnnReferences | None:
    """The "knn" rule's references of a model directory (None when the model has no such rule).

    Raises:
        ModelFileError: the rule needs `REFERENCES_FILE` and it is missing or unreadable.
    """
    if config.reject is None or config.reject.score != "knn":
        return None
    path = folder / REFERENCES_FILE
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"{path}: the model's reject rule needs this file ({error.strerror})") from None
    return fitting_references(KnnReferences.from_bytes(payload, str(path)), config, str(path))


def fitting_references(references: KnnReferences, config: ModelConfig, where: str) -> KnnReferences:
    """`references`, after checking they have the model's embedding size (model directory or ONNX file alike).

    Raises:
        ModelFileError: references of another size than the model's embeddings.
    """
    if len(references.mean) != config.embedding_dim:
        raise ModelFileError(
            f"{where}: references of {len(references.mean)} dimensions for a {config.embedding_dim}-dimensional model"
        )
    return references


def calibrated(logits: np.ndarray, config: ModelConfig) -> np.ndarray:
    """(N, C) probabilities from (N, C) logits: softmax(logits / temperature) for a multiclass model, one
    sigmoid(logit / temperature) per class for a multi-label one."""
    return config.task_type.probabilities(logits / config.temperature)


def needs_embeddings(config: ModelConfig) -> bool:
    """Whether answering needs each image's embedding besides its probabilities (a "knn" reject rule)."""
    return config.reject is not None and config.reject.score == "knn"


def confidence(probabilities: np.ndarray) -> np.ndarray:
    """(N,) the top class's probability."""
    return probabilities.max(axis=1) if len(probabilities) else np.zeros(0, dtype=np.float32)


def reject_scores(
    rule: RejectRule, probabilities: np.ndarray, embeddings: np.ndarray | None, references: KnnReferences | None
) -> np.ndarray:
    """(N,) each image's score under `rule` (it is answered when the score reaches `rule.threshold`)."""
    if rule.score == "confidence":
        return confidence(probabilities)
    if embeddings is None or references is None:
        raise ValueError("the knn reject score needs the images' embeddings and the model's references")
    return references.similarity(embeddings, rule.k)


def is_rejected(rule: RejectRule | None, score: float | None) -> bool:
    """Whether an image with this reject score is answered UNKNOWN (never without a rule or a score)."""
    return rule is not None and score is not None and bool(score < rule.threshold)


def answer_keys(
    config: ModelConfig, probabilities: np.ndarray, scores: np.ndarray | None
) -> list[tuple[int, ...] | str]:
    """Each image's answer in a comparable form: UNKNOWN when the reject rule turns it down, else the class
    indices it is given (the top class of a multiclass model, the label set of a multi-label one).

    Two runtimes give an image the same answer exactly when its keys are equal (the export checks use this).

    Example:
        >>> answer_keys(config, np.array([[0.9, 0.6], [0.2, 0.1]]), None)  # doctest: +SKIP
        [(0, 1), ()]
    """
    keys: list[tuple[int, ...] | str] = []
    for index, row in enumerate(probabilities):
        if is_rejected(config.reject, None if scores is None else float(scores[index])):
            keys.append(UNKNOWN)
        else:
            keys.append(config.task_type.answer(row, config.thresholds))
    return keys


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
