"""What every step of one training run shares: its configuration, where it writes, and how it reports.

Built once by the pipeline and passed down as one object, instead of the same five arguments travelling
through every function.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlearn.backbones.result_cache import ResultCache
from tlearn.config import TrainConfig
from tlearn.runs.layout import RunFolder
from tlearn.training.distributed import DistributedContext
from tlearn.training.tracking import Tracker
from tlearn.util.progress import Progress


@dataclass(frozen=True)
class TrainingContext:
    """One training run's settings and services.

    Attributes:
        config: the resolved configuration.
        run: the run folder's paths (only rank 0 writes there).
        resume: continue from the checkpoint in the run folder.
        dist: this process's place in a torchrun job (rank 0 of 1 when alone).
        tracker: receives scalars (TensorBoard, MLflow).
        progress: status lines and progress bars.
        results: where head searches and fits are kept for the next run on the same data (None: computed).
    """

    config: TrainConfig
    run: RunFolder
    resume: bool
    dist: DistributedContext
    tracker: Tracker
    progress: Progress
    results: ResultCache | None = None
