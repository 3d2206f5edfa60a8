"""How a prediction is run and answered: one options object from the API, the CLI, evaluation and serving down
to the engine, instead of the same keywords spelled out at every layer (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictOptions:
    """What a caller decides about predicting; the engine reads it, every layer above just passes it on.

    `tlearn.predict` and `Model.predict` take these as keywords and build one; `evaluate_folder` builds one
    from its `EvaluationSettings`, the service one per request (`?top_k=`, `?reject=`).

    Attributes:
        top_k: classes per answer, most probable first (capped at the number of classes).
        batch_size: images per model call.
        workers: decoding processes for files (None: from the core count and the engine's device; 0: decode in
            the calling process).
        reject: apply the model's reject rule ("unknown" below its threshold); False answers the best class.
        flip: test-time augmentation: average each image's outputs with its mirror image's.

    Example:
        >>> PredictOptions(top_k=1, workers=0)
        PredictOptions(top_k=1, batch_size=32, workers=0, reject=True, flip=False)
        >>> PredictOptions(batch_size=0)
        Traceback (most recent call last):
        ValueError: batch_size must be at least 1, got 0
    """

    top_k: int = 3
    batch_size: int = 32
    workers: int | None = None
    reject: bool = True
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("top_k", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more (None: from the core count), got {self.workers}")


DEFAULT_PREDICT_OPTIONS = PredictOptions()  # the engines' default argument (frozen, so safe to share)
