"""`tlearn predict --ray ADDRESS`: batch prediction spread over a Ray cluster with Ray Data.

Ray (`pip install "tlearn[ray]"`) is the engine most clusters already run for batch inference. The file list is
a Ray dataset; `map_batches` hands batches of paths to `RayBatchPredictor` actors, one per CPU of the cluster,
each of which loads the model once and decodes and predicts its batches exactly as `tlearn predict` does on one
machine (`InferenceEngine.predict_files_scored`, decoding in the actor's own process). The driver turns each
row of probabilities into the same `Prediction` the local path makes (`InferenceEngine.answer`: top-k, label
sets, reject rule) and yields them in input order as soon as the rows before them have arrived
(`in_input_order`), so output and exit code are those of the local path.

The model and the images must be readable at the same absolute paths on every node (a shared file system):
the actors receive paths, not pixels, so the cluster reads the images where they are. `ADDRESS` is what
`ray.init` takes: `auto` for the cluster this machine belongs to, `ray://HOST:10001` for a remote one, or
`local` to start a cluster of this machine's cores for this command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.engines.base import InferenceEngine, Prediction
from tlearn.engines.loading import check_engine, load_engine
from tlearn.engines.options import PredictOptions
from tlearn.runs.hub_models import local_model
from tlearn.util.progress import Progress
from tlearn.util.ray_cluster import connect, import_ray


class RayBatchPredictor:
    """A Ray Data actor: the model loaded once, single-threaded (the cluster runs one actor per CPU), predicting
    batches of paths into probabilities, reject scores (NaN without a rule) and error messages ("" when read)."""

    def __init__(self, model: str, engine: str | None, flip: bool) -> None:
        self.engine = _single_threaded(model, engine)
        self.flip = flip

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(path) for path in batch["path"]]
        options = PredictOptions(batch_size=max(1, len(paths)), workers=0, flip=self.flip)
        probabilities, scores, failures = self.engine.predict_files_scored(paths, options)
        return {
            "position": batch["position"],
            "probabilities": probabilities,
            "score": scores if scores is not None else np.full(len(paths), np.nan, dtype=np.float32),
            "error": np.array([failures.get(index, "") for index in range(len(paths))], dtype=object),
        }


def predict_on_ray(
    model: str | Path,
    files: Sequence[Path],
    options: PredictOptions,
    *,
    address: str,
    engine: str | None = None,
    progress: Progress | None = None,
) -> Iterator[Prediction]:
    """Answers for `files`, in input order, computed by actors on the Ray cluster at `address`.

    Raises:
        TlearnError: Ray is not installed, or the cluster cannot be reached (one line each).
    """
    ray = import_ray()
    model_path = local_model(model).resolve()
    check_engine(model_path, engine=engine, device="cpu")
    answering = load_engine(model_path, engine=engine, device="cpu")  # the driver shapes the answers
    connect(ray, address)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = context.enable_auto_log_stats = False
    rows = [{"position": position, "path": str(Path(path).resolve())} for position, path in enumerate(files)]
    dataset = ray.data.from_items(rows).map_batches(
        RayBatchPredictor,
        fn_constructor_kwargs={"model": str(model_path), "engine": engine, "flip": options.flip},
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cpus),
        num_cpus=1,
    )
    return _answers(dataset, files, options, answering, progress or Progress(quiet=True))


def _answers(
    dataset: Any, files: Sequence[Path], options: PredictOptions, answering: InferenceEngine, progress: Progress
) -> Iterator[Prediction]:
    with progress.bar(total=len(files), desc="predicting on ray") as bar:
        batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
        for position, probabilities, score, error in in_input_order(batches, bar.update):
            source = str(files[position])
            if error:
                yield Prediction(source=source, error=str(error))
            else:
                yield answering.answer(source, probabilities, options, None if np.isnan(score) else float(score))


def in_input_order(
    batches: Iterable[dict[str, np.ndarray]], arrived: Callable[[int], Any] = lambda count: None
) -> Iterator[tuple[int, np.ndarray, float, str]]:
    """(position, probabilities, score, error) rows of the actors' batches, in position order however the
    batches arrive: each row waits only for the rows before it, so memory holds the batches finished early.
    Ray's own `preserve_order` would also hold back every later batch behind a slow one; this yields as soon
    as the order allows. `arrived(count)` is told how many rows each batch brought.

    Example:
        >>> late = {"position": np.array([2, 3]), "probabilities": np.eye(2), "score": np.zeros(2), "error": ["", ""]}
        >>> early = {"position": np.array([0, 1]), "probabilities": np.eye(2), "score": np.zeros(2), "error": ["", "x"]}
        >>> [(position, error) for position, _, _, error in in_input_order([late, early])]
        [(0, ''), (1, 'x'), (2, ''), (3, '')]
    """
    waiting: dict[int, tuple[int, np.ndarray, float, str]] = {}
    following = 0
    for batch in batches:
        rows = zip(batch["position"], batch["probabilities"], batch["score"], batch["error"], strict=True)
        for position, probabilities, score, error in rows:
            waiting[int(position)] = (int(position), probabilities, float(score), str(error))
        arrived(len(batch["position"]))
        while following in waiting:
            yield waiting.pop(following)
            following += 1


def _single_threaded(model: str, engine: str | None) -> InferenceEngine:
    """The model on one thread: an `.onnx` file on a one-thread onnxruntime session, a model directory on torch
    limited to one thread (Ray gives each actor one CPU)."""
    if check_engine(model, engine=engine, device="cpu") == "onnx":
        from tlearn.engines.onnx_engine import OnnxClassifier

        return OnnxClassifier.load(model, threads=1)
    import torch

    torch.set_num_threads(1)
    return load_engine(model, engine=engine, device="cpu")
