"""What every inference engine shares: answers, test-time flips and streaming files (torch-free).

An engine (`tlearn.engines.torch_engine.Classifier` on PyTorch, `tlearn.engines.onnx_engine.OnnxClassifier` on
onnxruntime) only has to turn a batch of preprocessed uint8 pixels into class probabilities, and, for a model
whose reject rule scores by "knn", into the embeddings its classifier reads. Everything else — decoding files
in worker processes while the model runs, constant memory on folders of any size, the progress bar, top-k
answers, label sets, "unknown" answers (`tlearn.engines.answers`), in-memory pictures — lives here once, so
predict, evaluate and serve behave the same whichever engine runs the model (`tlearn.engines.loading` picks
the engine from the file type). What the caller decides (top-k, batch size, decoding workers, the reject rule,
flips) arrives as one `tlearn.engines.options.PredictOptions`. Probabilities or reject scores that are not
finite are a `ModelOutputError`, never an answer.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tlearn.data.decoding import BatchDecoder, default_workers
from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, to_rgb
from tlearn.data.preprocess import EvalPreprocess, Preprocessing
from tlearn.engines.answers import UNKNOWN, KnnReferences, is_rejected, needs_embeddings, reject_scores
from tlearn.engines.options import DEFAULT_PREDICT_OPTIONS, PredictOptions
from tlearn.errors import ModelOutputError
from tlearn.runs.model_dir import ModelConfig
from tlearn.util.progress import Progress

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass
class Prediction:
    """A model's answer for one image, or the reason it could not be read.

    `labels` and `probabilities` are the top-k classes, most probable first (for display, and the best guess
    of a rejected image). A multi-label model's answer is `label_set`: every class whose probability reaches
    its threshold (possibly none), with `label_set_probabilities`. Under a reject rule `reject_score` is the
    image's score and `unknown` says it fell below the rule's threshold (the answer is then "unknown").

    Example:
        >>> prediction = Prediction("bee.jpg", ["bees", "ants"], [0.97, 0.03])
        >>> prediction.label
        'bees'
        >>> Prediction("x.jpg", ["bees"], [0.51], unknown=True, reject_score=0.12).label
        'unknown'
    """

    source: str  # file path, or "<image N>" for in-memory images
    labels: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None
    label_set: list[str] | None = None  # multi-label models only
    label_set_probabilities: list[float] | None = None
    unknown: bool = False
    reject_score: float | None = None  # models with a reject rule only

    @property
    def label(self) -> str | None:
        """The top answer: "unknown" when rejected, the most probable label of a multi-label model's set (None
        when the set is empty), else the top-1 class (None when the image could not be read)."""
        if self.unknown:
            return UNKNOWN
        if self.label_set is not None:
            return self.label_set[0] if self.label_set else None
        return self.labels[0] if self.labels else None

    def to_dict(self) -> dict:
        """The JSON form; a plain multiclass model's keeps its four keys, the others add their answer."""
        answer = {
            "source": self.source,
            "labels": self.labels,
            "probabilities": self.probabilities,
            "error": self.error,
        }
        if self.label_set is None and self.reject_score is None:
            return answer
        answer["label"] = self.label
        if self.label_set is not None:
            answer["label_set"] = self.label_set
            answer["label_set_probabilities"] = self.label_set_probabilities
        if self.reject_score is not None:
            answer["unknown"] = self.unknown
            answer["reject_score"] = self.reject_score
        return answer


class InferenceEngine(ABC):
    """A loaded model that maps preprocessed pixels to probabilities; predictions for files and pictures on top.

    Subclasses implement `_forward`. `engine` names the runtime ("torch" or "onnx") and `path` is where the
    model was loaded from (a model directory or an exported file). `references` are the training embeddings
    a "knn" reject rule compares images with (None for any other model).

    Example:
        >>> engine = load_engine("model.onnx")  # doctest: +SKIP
        >>> answers = engine.iter_file_predictions([Path("bee.jpg")], PredictOptions(top_k=1))  # doctest: +SKIP
        >>> [p.label for p in answers]  # doctest: +SKIP
        ['bees']
    """

    engine: str

    def __init__(self, config: ModelConfig, path: Path | None, references: KnnReferences | None = None) -> None:
        self.config = config
        self.path = path
        self.references = references
        self.preprocessing: Preprocessing = config.preprocessing_spec()
        # A model loaded from files answers users: outputs that are not finite are an error (`_check_finite`). A
        # network being trained (no path) is evaluated by training itself, where a diverged epoch scores NaN and
        # is not kept, and one rank of a distributed run must not stop alone.
        self.checks_outputs = path is not None

    @property
    def classes(self) -> list[str]:
        """Class names in output order."""
        return list(self.config.classes)

    @property
    def precision(self) -> str:
        """Numeric precision of the weights: fp32 unless the engine says otherwise."""
        return "fp32"

    @property
    def accelerated(self) -> bool:
        """Whether the model runs on an accelerator (decoding then gets most of the CPU cores)."""
        return False

    @abstractmethod
    def _forward(self, pixels: np.ndarray, *, embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_classes) calibrated probabilities (softmax, or a
        sigmoid per class for a multi-label model) and, with `embeddings`, the (B, D) features the classifier
        reads (else None)."""

    def probabilities(self, pixels: np.ndarray, *, flip: bool = False) -> np.ndarray:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_classes) calibrated probabilities.

        With `flip` (test-time augmentation), the mean of the probabilities of each image and its mirror image.

        Raises:
            ModelOutputError: the model gave NaN or infinite probabilities (so do every prediction, evaluation
                and served answer, which all come through here): an error, never a NaN answer.
        """
        return self._outputs(pixels, flip=flip, embeddings=False)[0]

    def scored_probabilities(self, pixels: np.ndarray, *, flip: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, num_classes) calibrated probabilities and each image's (B,) reject score (None without a rule).

        A "knn" rule scores the embeddings (averaged with the mirror image's under `flip`, as the
        probabilities are), a "confidence" rule the probabilities (`tlearn.engines.answers.reject_scores`).
        """
        rule = self.config.reject
        if rule is None:
            return self.probabilities(pixels, flip=flip), None
        probabilities, embeddings = self._outputs(pixels, flip=flip, embeddings=needs_embeddings(self.config))
        scores = reject_scores(rule, probabilities, embeddings, self.references)
        self._check_finite(scores, f"{rule.score} reject scores")
        return probabilities, scores

    def _outputs(self, pixels: np.ndarray, *, flip: bool, embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
        probabilities, features = self._forward(pixels, embeddings=embeddings)
        if flip:
            mirrored = np.ascontiguousarray(pixels[:, :, ::-1])  # (B, H, W, 3) flipped along W
            mirrored_probabilities, mirrored_features = self._forward(mirrored, embeddings=embeddings)
            probabilities = (probabilities + mirrored_probabilities) / 2
            if features is not None and mirrored_features is not None:
                features = (features + mirrored_features) / 2
        self._check_finite(probabilities, "probabilities")
        return probabilities, features

    def _check_finite(self, values: np.ndarray, what: str) -> None:
        """Refuse NaN or infinite outputs: every answer, metric and served response is made from these, and
        NaN would print as invalid JSON, sort as an arbitrary class and pass any threshold test.

        Raises:
            ModelOutputError: some rows of (B, ...) `values` are not finite.
        """
        if not self.checks_outputs or not len(values):
            return
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)  # (B,)
        if finite.all():
            return
        raise ModelOutputError(
            f"{self.path}: the model gave {what} that are not finite (NaN or infinity) for {int((~finite).sum())} "
            f"of {len(values)} image(s); its weights or config are damaged (restore them or train again)"
        )

    def predict(
        self,
        images: Sequence[ImageInput],
        options: PredictOptions = DEFAULT_PREDICT_OPTIONS,
        *,
        progress: Progress | None = None,
    ) -> list[Prediction]:
        """Answers for files (decoded in parallel), PIL images or RGB arrays, in input order.

        A file that cannot be decoded gets a `Prediction` with `error` set; the others are still predicted.

        Example:
            >>> answers = clf.predict(["bee.jpg", picture], PredictOptions(top_k=1))  # doctest: +SKIP
            >>> [(p.label, round(p.probabilities[0], 2)) for p in answers]  # doctest: +SKIP
            [('bees', 0.97), ('ants', 0.88)]
        """
        results: list[Prediction | None] = [None] * len(images)
        files = [(i, Path(item)) for i, item in enumerate(images) if isinstance(item, str | Path)]
        in_memory = [(i, item) for i, item in enumerate(images) if not isinstance(item, str | Path)]
        answers = self.iter_file_predictions([path for _, path in files], options, progress=progress)
        for (index, _), prediction in zip(files, answers, strict=True):
            results[index] = prediction
        prep = EvalPreprocess(self.preprocessing)
        for start in range(0, len(in_memory), options.batch_size):
            chunk = in_memory[start : start + options.batch_size]
            pixels = np.stack([prep.from_picture(_as_picture(item)) for _, item in chunk])
            probabilities, scores = self.scored_probabilities(pixels, flip=options.flip)
            for position, (index, _) in enumerate(chunk):
                score = None if scores is None else scores[position]
                results[index] = self.answer(f"<image {index}>", probabilities[position], options, score)
        return [result for result in results if result is not None]

    def iter_file_predictions(
        self,
        paths: Sequence[Path],
        options: PredictOptions = DEFAULT_PREDICT_OPTIONS,
        *,
        progress: Progress | None = None,
    ) -> Iterator[Prediction]:
        """Answers for each file, in input order, yielded batch by batch (constant memory on any folder)."""
        model_call = functools.partial(self.scored_probabilities, flip=options.flip)
        for positions, outputs, failures in self._stream_files(paths, options, progress, model_call=model_call):
            answers = {position: Prediction(source=str(paths[position]), error=reason) for position, reason in failures}
            probabilities, scores = outputs if positions else (None, None)
            for row, position in enumerate(positions):
                score = None if scores is None else scores[row]
                answers[position] = self.answer(str(paths[position]), probabilities[row], options, score)
            yield from (answers[position] for position in sorted(answers))

    def predict_files_probabilities(
        self,
        paths: Sequence[Path],
        options: PredictOptions = DEFAULT_PREDICT_OPTIONS,
        *,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Probabilities for every file ((N, C), zero rows for failures) and the failure reasons.

        Only `options.batch_size`, `workers` and `flip` matter here: no answers are shaped.
        """
        probabilities, _, failures = self.predict_files_scored(paths, options, progress=progress, scores=False)
        return probabilities, failures

    def predict_files_scored(
        self,
        paths: Sequence[Path],
        options: PredictOptions = DEFAULT_PREDICT_OPTIONS,
        *,
        progress: Progress | None = None,
        scores: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """`predict_files_probabilities` plus every file's reject score ((N,), None when the model has no reject
        rule or `scores` is False)."""
        with_scores = scores and self.config.reject is not None
        matrix = np.zeros((len(paths), len(self.classes)), dtype=np.float32)
        scored = np.zeros(len(paths), dtype=np.float32) if with_scores else None
        failures: dict[int, str] = {}

        def model_call(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            if with_scores:
                return self.scored_probabilities(pixels, flip=options.flip)
            return self.probabilities(pixels, flip=options.flip), None

        for positions, outputs, batch_failures in self._stream_files(paths, options, progress, model_call=model_call):
            failures.update(batch_failures)
            if positions:
                matrix[positions] = outputs[0]
                if scored is not None:
                    scored[positions] = outputs[1]
        return matrix, scored, failures

    def embed_files(
        self, paths: Sequence[Path], *, batch_size: int = 32, workers: int | None = None
    ) -> tuple[np.ndarray, dict[int, str]]:
        """The (N, D) embeddings the model's classifier reads for every file (zero rows for failures), and the
        failure reasons: what a "knn" reject rule compares (training computes its references with it)."""
        rows: dict[int, np.ndarray] = {}
        failures: dict[int, str] = {}
        options = PredictOptions(batch_size=batch_size, workers=workers)
        for positions, features, batch_failures in self._stream_files(
            paths, options, None, model_call=lambda pixels: self._forward(pixels, embeddings=True)[1]
        ):
            failures.update(batch_failures)
            rows.update(zip(positions, features, strict=True) if positions else ())
        width = len(next(iter(rows.values()))) if rows else self.config.embedding_dim
        matrix = np.zeros((len(paths), width), dtype=np.float32)
        for position, row in rows.items():
            matrix[position] = row
        return matrix, failures

    def _stream_files(
        self,
        paths: Sequence[Path],
        options: PredictOptions,
        progress: Progress | None,
        *,
        model_call: Callable[[np.ndarray], Any],
    ) -> Iterator[tuple[list[int], Any, list[tuple[int, str]]]]:
        """(positions, what `model_call` returns for the decoded pixels, failures) per batch (None for a batch
        of failures only: nothing is run); worker processes decode ahead of the model."""
        progress = progress or Progress(quiet=True)
        workers = options.workers if options.workers is not None else default_workers(accelerator=self.accelerated)
        with (
            BatchDecoder(
                list(paths),
                self.preprocessing,
                batch_size=options.batch_size,
                workers=workers,
                max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
            ) as batches,
            progress.bar(total=len(paths), desc="predicting") as bar,
        ):
            for batch in batches:
                outputs = model_call(batch.pixels) if batch.positions else None
                yield batch.positions, outputs, batch.failures
                bar.update(len(batch.positions) + len(batch.failures))

    def top_k(self, source: str, row: np.ndarray, top_k: int) -> Prediction:
        """The `top_k` most probable classes of one row of probabilities."""
        order = np.argsort(-row)[: max(1, min(top_k, len(self.classes)))]
        return Prediction(source, [self.classes[i] for i in order], [float(row[i]) for i in order])

    def answer(
        self,
        source: str,
        row: np.ndarray,
        options: PredictOptions = DEFAULT_PREDICT_OPTIONS,
        score: float | None = None,
    ) -> Prediction:
        """The model's answer for one image from its row of probabilities and its reject score.

        The `options.top_k` classes always; a multi-label model's label set (`Task.label_set`); under a
        reject rule the score, and "unknown" below the rule's threshold unless `options.reject` is False.

        Example:
            >>> engine.answer("x.jpg", np.array([0.7, 0.3]), PredictOptions(top_k=1), 0.1).to_dict()  # doctest: +SKIP
            {'source': 'x.jpg', 'labels': ['ants'], 'probabilities': [0.7], 'error': None, 'label': 'unknown',
             'unknown': True, 'reject_score': 0.1}
        """
        prediction = self.top_k(source, row, options.top_k)
        chosen = self.config.task_type.label_set(row, self.config.thresholds)
        if chosen is not None:  # a model that answers with label sets
            prediction.label_set = [self.classes[i] for i in chosen]
            prediction.label_set_probabilities = [float(row[i]) for i in chosen]
        if score is not None and self.config.reject is not None:
            prediction.reject_score = float(score)
            prediction.unknown = options.reject and is_rejected(self.config.reject, float(score))
        return prediction


def _as_picture(item: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    array = np.asarray(item)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return to_rgb(Image.fromarray(array.astype(np.uint8)))
    raise ImageDecodeError(f"expected an (H, W) or (H, W, 3|4) uint8 array, got shape {array.shape}")
