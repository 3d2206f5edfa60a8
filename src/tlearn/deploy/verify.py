"""The check every export passes before it is written: run it next to the PyTorch model on the same images.

Every exporter, whatever its format, asks this module for the same things: the check images (`CheckSet.collect`:
the images given, else the run's validation split, else the calibration images, else random pixels), the
PyTorch model's probabilities and reject scores on them, and a comparison (`CheckSet.compare`) of an export's
outputs with those on the probabilities, the reject scores and the answers (label sets, "unknown"), against
`ExportLimits`. A failed check raises `ExportError` (`raise_if_failed`) before anything reaches the disk. On
random pixels agreement is reported, never enforced: noise says nothing about the answers real images get.

Each batch of check images runs as batch 1 first, then batches of 32, so the exported graph's dynamic batch
dimension is exercised on every export. Imports torch (through the PyTorch engine it checks against).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlearn.data.decoding import BatchDecoder, default_workers
from tlearn.data.discovery import list_image_files
from tlearn.data.preprocess import Preprocessing
from tlearn.engines.answers import answer_keys
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.runs.layout import MODEL_DIR
from tlearn.runs.records import split_files
from tlearn.util.progress import Progress

MAX_CHECK_IMAGES = 256
MAX_CALIBRATION_IMAGES = 128
CHECK_BATCH_SIZES = (1, 32)  # the first image alone, then batches of 32: the dynamic batch dimension is exercised

Outputs = tuple[np.ndarray, np.ndarray | None]  # (N, C) probabilities, (N,) reject scores or None


@dataclass(frozen=True)
class ExportLimits:
    """What an export must achieve to be written.

    Attributes:
        max_abs_diff: largest allowed |Δprobability| between an fp32 export (ONNX or TorchScript) and PyTorch.
        max_score_diff: largest allowed |Δreject score| between an fp32 export and PyTorch (a reject rule's
            score; "knn" standardises the embeddings, which magnifies their differences a little).
        min_int8_agreement: smallest allowed share of real images INT8 and fp32 give the same answer (top-1
            class; the label set or "unknown" for models that answer so).
    """

    max_abs_diff: float = 1e-4
    max_score_diff: float = 1e-3
    min_int8_agreement: float = 0.99


@dataclass
class ExportCheck:
    """One comparison of an exported model with its reference on the same images.

    Example:
        >>> check = ExportCheck("onnx fp32 vs pytorch", 28, "data", 3e-7, 1.0, "max |Δprob| ≤ 0.0001", True)
        >>> print(check.summary())  # doctest: +NORMALIZE_WHITESPACE
        check onnx fp32 vs pytorch: 28 images (data): max |Δprob| 3.00e-07, top-1 agreement 100.00%
        [max |Δprob| ≤ 0.0001] ok
    """

    name: str  # e.g. "onnx fp32 vs pytorch"
    images: int
    image_source: str
    max_abs_diff: float
    top1_agreement: float
    limit: str
    passed: bool
    max_score_diff: float | None = None  # largest |Δreject score| (models with a reject rule)
    answer_agreement: float | None = None  # share of images given the same label set / "unknown" answer

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        extra = "" if self.max_score_diff is None else f", max |Δscore| {self.max_score_diff:.2e}"
        if self.answer_agreement is not None:
            extra += f", same answer {100 * self.answer_agreement:.2f}%"
        return (
            f"check {self.name}: {self.images} images ({self.image_source}): max |Δprob| {self.max_abs_diff:.2e}, "
            f"top-1 agreement {100 * self.top1_agreement:.2f}%{extra}  [{self.limit}] {verdict}"
        )


def raise_if_failed(checks: list[ExportCheck]) -> None:
    """Stop the export at its first failed check (its summary is the one-line error the user sees)."""
    failed = [check for check in checks if not check.passed]
    if failed:
        raise ExportError(f"export not written: {failed[0].summary()}")


@dataclass
class CheckSet:
    """The images every export is checked on, with the PyTorch model's probabilities and reject scores.

    `calibration_files` travel with it because they are the other real images an export may use: INT8
    calibrates on them, and they are the check images when nothing better is found.
    """

    classifier: Classifier
    pixels: np.ndarray  # (N, H, W, 3) uint8, preprocessed
    source: str  # where the images came from, for the report
    real: bool  # False for random pixels: agreement is then reported, not enforced
    reference: Outputs  # PyTorch's
    calibration_files: list[Path]  # the representative images for INT8 calibration (none without them)

    @classmethod
    def collect(
        cls, classifier: Classifier, check_data: str | Path | None, calibration_files: list[Path], progress: Progress
    ) -> CheckSet:
        """The check images: `check_data`, else the run's validation split, else the calibration images, else
        noise; with PyTorch's outputs on them."""
        if check_data is not None:
            files, source = image_files(check_data, MAX_CHECK_IMAGES), str(check_data)
        else:
            files, source = _validation_split(classifier.path), "the run's validation split"
            if not files and calibration_files:
                files, source = calibration_files, "the calibration images"
        pixels = decode_images(files, classifier.preprocessing)
        real = len(pixels) > 0
        if real:
            progress.info(f"checking on {len(pixels)} images from {source}")
        else:
            height, width = classifier.preprocessing.input_size
            pixels = np.random.default_rng(0).integers(0, 256, (32, height, width, 3), dtype=np.uint8)
            source = "random pixels: no real images found, pass --check-data DIR"
        reference = in_check_batches(classifier.scored_probabilities, pixels)
        return cls(classifier, pixels, source, real, reference, calibration_files)

    def run(self, model_call: Callable[[np.ndarray], Outputs]) -> Outputs:
        """Probabilities and reject scores of all check images from an exported model's
        `scored_probabilities(pixels)`."""
        return in_check_batches(model_call, self.pixels)

    def compare(
        self,
        name: str,
        outputs: Outputs,
        *,
        reference: Outputs | None = None,
        max_abs_diff: float | None = None,
        max_score_diff: float | None = None,
        min_agreement: float | None = None,
    ) -> ExportCheck:
        """Compare probabilities, reject scores and answers with the reference (PyTorch's unless given).

        `min_agreement` applies to the answers: the top-1 class, or the label set and "unknown" for a model
        that answers so (`tlearn.engines.answers.answer_keys`).
        """
        config = self.classifier.config
        (probabilities, scores), (expected, expected_scores) = outputs, reference or self.reference
        difference = float(np.abs(probabilities - expected).max())
        agreement = float((probabilities.argmax(1) == expected.argmax(1)).mean())
        given, wanted = answer_keys(config, probabilities, scores), answer_keys(config, expected, expected_scores)
        answers_agree = float(np.mean([a == b for a, b in zip(given, wanted, strict=True)])) if len(given) else 1.0
        score_difference = None
        if scores is not None and expected_scores is not None:
            score_difference = float(np.abs(scores - expected_scores).max())
        passed, limits = True, []
        if max_abs_diff is not None:
            passed &= difference <= max_abs_diff
            limits.append(f"max |Δprob| ≤ {max_abs_diff:g}")
        if max_score_diff is not None and score_difference is not None:
            passed &= score_difference <= max_score_diff
            limits.append(f"max |Δscore| ≤ {max_score_diff:g}")
        if min_agreement is not None:
            passed &= answers_agree >= min_agreement
            limits.append(f"agreement ≥ {100 * min_agreement:g}%")
        return ExportCheck(
            name,
            len(expected),
            self.source,
            difference,
            agreement,
            ", ".join(limits) or "reported only (no real images)",
            bool(passed),
            score_difference,
            answers_agree,
        )

    def compare_with_pytorch(self, name: str, outputs: Outputs, limits: ExportLimits) -> ExportCheck:
        """The check every fp32 export passes: probabilities and reject scores within `limits` of PyTorch's."""
        return self.compare(name, outputs, max_abs_diff=limits.max_abs_diff, max_score_diff=limits.max_score_diff)


def in_check_batches(model_call: Callable[[np.ndarray], Outputs], pixels: np.ndarray) -> Outputs:
    """(N, C) probabilities and (N,) reject scores (or None) computed in batches of CHECK_BATCH_SIZES: batch 1
    and a full batch both run.

    Example:
        >>> calls = []
        >>> def model_call(batch):
        ...     calls.append(len(batch))
        ...     return np.ones((len(batch), 2)), None
        >>> probabilities, scores = in_check_batches(model_call, np.zeros((40, 4, 4, 3), dtype=np.uint8))
        >>> calls, probabilities.shape, scores
        ([1, 32, 7], (40, 2), None)
    """
    first, rest = CHECK_BATCH_SIZES
    chunks = [pixels[:first], *(pixels[start : start + rest] for start in range(first, len(pixels), rest))]
    outputs = [model_call(chunk) for chunk in chunks if len(chunk)]
    scores = [batch_scores for _, batch_scores in outputs]
    return (
        np.concatenate([probabilities for probabilities, _ in outputs]),
        None if any(batch is None for batch in scores) else np.concatenate(scores),
    )


def image_files(folder: str | Path, limit: int) -> list[Path]:
    """At most `limit` image files found under `folder` (recursively), spread over all of them."""
    return _evenly_spaced(list_image_files([Path(folder)]), limit)


def decode_images(files: list[Path], preprocessing: Preprocessing) -> np.ndarray:
    """(N, H, W, 3) uint8 preprocessed pixels of the decodable files."""
    height, width = preprocessing.input_size
    with BatchDecoder(files, preprocessing, batch_size=32, workers=default_workers()) as batches:
        arrays = [batch.pixels for batch in batches]
    return np.concatenate(arrays) if arrays else np.empty((0, height, width, 3), dtype=np.uint8)


def _validation_split(folder: Path | None) -> list[Path]:
    """The run's validation images, if its data folder is still there (at most MAX_CHECK_IMAGES)."""
    if folder is None or folder.name != MODEL_DIR:
        return []
    return _evenly_spaced(split_files(folder.parent, "val"), MAX_CHECK_IMAGES)


def _evenly_spaced(files: list[Path], limit: int) -> list[Path]:
    """At most `limit` files spread over the whole list (every class of a sorted folder is represented).

    Example:
        >>> [path.name for path in _evenly_spaced([Path(f"{i}.png") for i in range(10)], 3)]
        ['0.png', '4.png', '9.png']
    """
    if len(files) <= limit:
        return files
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
