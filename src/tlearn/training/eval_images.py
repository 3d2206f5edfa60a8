"""Evaluation images during fine-tuning: preprocessed once, scored after every epoch (imports torch).

The validation images are scored after every epoch and the test images once at the end, always with the
evaluation preprocessing. Decoding them again each epoch would cost as much as a share of the training itself,
so up to `MAX_HELD_EVAL_IMAGES` are kept decoded in memory; beyond, they stream from their files. Under torchrun
each rank scores its share and the shares are gathered, so every rank takes the same decisions.
"""

from __future__ import annotations

import numpy as np

from tlearn.data.checks import LabelledFiles
from tlearn.data.decoding import BatchDecoder
from tlearn.engines.options import PredictOptions
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import TlearnError
from tlearn.evaluation.tasks import Task
from tlearn.training.distributed import DistributedContext, unshard

EVAL_BATCH = 64
MAX_HELD_EVAL_IMAGES = 4000  # evaluation images kept decoded in memory; beyond, they stream from their files


class EvalImages:
    """One split's images and targets, preprocessed once (in memory up to MAX_HELD_EVAL_IMAGES).

    Example:
        >>> val = EvalImages(files, evaluator, workers=2, batch_size=32)  # doctest: +SKIP
        >>> loss, score = val.scores(evaluator, task, dist)  # doctest: +SKIP
    """

    def __init__(self, files: LabelledFiles, evaluator: Classifier, *, workers: int, batch_size: int) -> None:
        self.files, self.workers, self.batch_size = files, workers, batch_size
        self.pixels: np.ndarray | None = None  # (N, H, W, 3) uint8 when held in memory
        if len(files.paths) <= MAX_HELD_EVAL_IMAGES:
            with BatchDecoder(files.paths, evaluator.preprocessing, batch_size=EVAL_BATCH, workers=workers) as batches:
                decoded = list(batches)
            for batch in decoded:
                if batch.failures:
                    position, reason = batch.failures[0]
                    raise TlearnError(f"{files.paths[position]}: became unreadable during training ({reason})")
            height, width = evaluator.preprocessing.input_size
            self.pixels = (
                np.concatenate([batch.pixels for batch in decoded])
                if decoded
                else np.empty((0, height, width, 3), np.uint8)
            )

    def probabilities(self, evaluator: Classifier, dist: DistributedContext | None) -> np.ndarray:
        """(N, C) probabilities of the current model (sharded over ranks and gathered when `dist` is given)."""
        evaluator.model.eval()
        positions = list(range(len(self.files.paths)))
        if dist is not None and dist.enabled:
            positions = dist.shard(positions)
        if self.pixels is not None:
            chunks = [self.pixels[positions[i : i + EVAL_BATCH]] for i in range(0, len(positions), EVAL_BATCH)]
            rows = [evaluator.probabilities(chunk) for chunk in chunks]
            probabilities = np.concatenate(rows) if rows else np.empty((0, len(evaluator.classes)), np.float32)
        else:
            paths = [self.files.paths[position] for position in positions]
            options = PredictOptions(batch_size=self.batch_size, workers=self.workers)
            probabilities, failures = evaluator.predict_files_probabilities(paths, options, progress=None)
            if failures:
                position, reason = next(iter(failures.items()))
                raise TlearnError(f"{paths[position]}: became unreadable during training ({reason})")
        if dist is not None and dist.enabled:
            probabilities = np.stack(
                unshard([list(part) for part in dist.gather(probabilities)], len(self.files.paths))
            )
        return probabilities

    def scores(self, evaluator: Classifier, task: Task, dist: DistributedContext | None) -> tuple[float, float]:
        """(loss, score) of the current model: the task's log-loss and its threshold-free validation score
        (accuracy, or mAP for label sets, whose thresholds are chosen after training)."""
        probabilities = self.probabilities(evaluator, dist)
        return task.loss(probabilities, self.files.labels), task.validation_score(probabilities, self.files.labels)
