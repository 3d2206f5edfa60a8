"""Experiment: would averaging the linear head's and the fine-tuned network's probabilities beat both? And
would interpolating the fine-tuned weights with their linear-head start (WiSE-FT, `--wise`) beat the fine-tuned
network? Would averaging the fine-tuned network's answers on each image and its mirror image (flip TTA)?

    python benchmarks/exp_ensemble.py [--sets signs,mri,hymenoptera] [--draws 0,1] [--wise] [--name exp-ensemble]

Each (set, draw) is the default run (auto mode, its backbone choice, its fine-tuning from Lite0) on a folder
whose `train/` is the draw's training images (validation carved from it by the hash, as tlearn does) and whose
`test/` is the draw's held-out images (bench_suite.resplit). The run's two candidates are caught as the
pipeline compares them; their validation and test probabilities then score every mixture
w * linear + (1 - w) * fine-tuned, and the mixture validation would choose. `--final-fit train` spares the
last refit, which the figures (taken before it) do not depend on.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import tlearn
import tlearn.pipeline as pipeline
from _common import require_shared, save
from bench_suite import draw_folder

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # share of the linear head's probabilities
ALPHAS = (0.5, 0.7, 0.85, 1.0)  # share of the fine-tuned weights (1 - alpha: the linear-head start's)


def interpolated(context, prepared, linear, tuned) -> dict[str, np.ndarray]:
    """val_/test_ probabilities of the weights (1 - alpha) * start + alpha * tuned for each alpha."""
    from tlearn.engines.torch_engine import Classifier
    from tlearn.training import candidates
    from tlearn.training.eval_images import EvalImages

    start = candidates._linear_state(prepared, candidates._fit_linear_on(context.config, prepared, linear, ("train",)))
    arrays, images = {}, {}
    for alpha in ALPHAS:
        state = {
            name: ((1 - alpha) * start[name] + alpha * value).astype(value.dtype)
            if np.issubdtype(value.dtype, np.floating)
            else value
            for name, value in tuned.state.items()
        }
        evaluator = Classifier.from_state(state, tuned.model_config, device="cpu")
        for split in ("val", "test"):
            if split not in images:
                images[split] = EvalImages(prepared.files(split), evaluator, workers=2, batch_size=64)
            arrays[f"wise{alpha}_{split}"] = images[split].probabilities(evaluator, None)
    return arrays


def flipped(prepared, tuned) -> dict[str, np.ndarray]:
    """tta_ probabilities: the mean of the fine-tuned network's on each image and on its mirror image."""
    from tlearn.engines.torch_engine import Classifier
    from tlearn.training.eval_images import EvalImages

    evaluator = Classifier.from_state(tuned.state, tuned.model_config, device="cpu")
    arrays = {}
    for split in ("val", "test"):
        images = EvalImages(prepared.files(split), evaluator, workers=2, batch_size=64)
        plain = images.probabilities(evaluator, None)
        images.pixels = np.ascontiguousarray(images.pixels[:, :, ::-1])
        arrays[f"tta_{split}"] = (plain + images.probabilities(evaluator, None)) / 2
    return arrays


def train_catching(data: Path, out: Path, seen: Callable[..., None], **options: object) -> None:
    """The default run on `data` (final fit on train only: the figures are taken before it; `options` change
    other settings), calling `seen(context, prepared, linear, kept, outcome)` where the pipeline compares its
    two candidates."""
    original = pipeline._pick_candidate

    def catching(context, prepared, linear):
        kept, outcome = original(context, prepared, linear)
        seen(context, prepared, linear, kept, outcome)
        return kept, outcome

    pipeline._pick_candidate = catching
    try:
        tlearn.train(data, out=out, quiet=True, final_fit="train", **options)
    finally:
        pipeline._pick_candidate = original


def caught_run(data: Path, out: Path, wise: bool) -> dict[str, np.ndarray]:
    caught: dict[str, object] = {}

    def seen(context, prepared, linear, kept, outcome):
        caught.update(prepared=prepared, linear=linear, tuned=outcome.tuned)
        if outcome.tuned is not None:
            caught["extra"] = flipped(prepared, outcome.tuned)
            if wise:
                caught["extra"] |= interpolated(context, prepared, linear, outcome.tuned)

    train_catching(data, out, seen)
    prepared, linear, tuned = caught["prepared"], caught["linear"], caught["tuned"]
    if tuned is None:
        return {}
    linear_data = linear.data or prepared  # the chosen backbone's embeddings (fine-tuning starts from Lite0's)
    return (
        {
            "linear_val": linear.probabilities["val"],
            "linear_test": linear.head.probabilities(linear_data.features["test"]),  # fitted on train + val
            "tuned_val": tuned.probabilities["val"],
            "tuned_test": tuned.probabilities["test"],
        }
        | {f"targets_{split}": prepared.targets[split] for split in ("val", "test")}
        | caught["extra"]
    )


def scored(arrays: dict[str, np.ndarray]) -> dict[str, object]:
    def accuracy(split: str, weight: float) -> float:
        mixed = weight * arrays[f"linear_{split}"] + (1 - weight) * arrays[f"tuned_{split}"]
        return float((mixed.argmax(axis=1) == arrays[f"targets_{split}"]).mean())

    def loss(weight: float) -> float:
        mixed = weight * arrays["linear_val"] + (1 - weight) * arrays["tuned_val"]
        picked = mixed[np.arange(len(mixed)), arrays["targets_val"]]
        return float(-np.log(np.clip(picked, 1e-12, None)).mean())

    def right(name: str, split: str) -> float:
        return float((arrays[f"{name}_{split}"].argmax(axis=1) == arrays[f"targets_{split}"]).mean())

    extra = {"tta_val": right("tta", "val"), "tta_test": right("tta", "test")}
    if "wise0.5_val" in arrays:
        wise_val = {alpha: right(f"wise{alpha}", "val") for alpha in ALPHAS}
        wise_chosen = max(ALPHAS, key=lambda alpha: (wise_val[alpha], alpha))  # ties: the more fine-tuned
        extra |= {
            "wise_val": wise_val,
            "wise_test": {alpha: right(f"wise{alpha}", "test") for alpha in ALPHAS},
            "wise_chosen": wise_chosen,
            "wise_chosen_test": right(f"wise{wise_chosen}", "test"),
        }
    val = {w: accuracy("val", w) for w in WEIGHTS}
    chosen = max(WEIGHTS, key=lambda w: (val[w], -loss(w)))
    return {
        "val": val,
        "test": {w: accuracy("test", w) for w in WEIGHTS},
        "val_loss": {w: loss(w) for w in WEIGHTS},
        "chosen_weight": chosen,
        "chosen_test": accuracy("test", chosen),
        "n_val": len(arrays["targets_val"]),
        "n_test": len(arrays["targets_test"]),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default="signs,mri,hymenoptera")
    parser.add_argument("--draws", default="0,1")
    parser.add_argument("--wise", action="store_true", help="also score WiSE-FT weight interpolations")
    parser.add_argument("--name", default="exp-ensemble")
    args = parser.parse_args()
    require_shared()
    results: dict[str, dict[str, object]] = {}
    for data_set in args.sets.split(","):
        for draw in map(int, args.draws.split(",")):
            with tempfile.TemporaryDirectory(prefix="tlearn-exp-") as temp:
                work = Path(temp)
                arrays = caught_run(draw_folder(data_set, draw, work), work / "run", args.wise)
            cell = scored(arrays) if arrays else {"skipped": "fine-tuning did not run"}
            results.setdefault(data_set, {})[str(draw)] = cell
            print(data_set, draw, cell, flush=True)
            save(args.name, {"weights": WEIGHTS, "results": results})


if __name__ == "__main__":
    main()
