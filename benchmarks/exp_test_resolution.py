"""Experiment: does the fine-tuned network answer better when test pictures are fed at a higher resolution than
its training crops (the "FixRes" effect: random resized crops make objects look larger in training than a
centre crop at the same size does at test time)?

    python benchmarks/exp_test_resolution.py [--sets signs,mri] [--draws 0,1,2] [--sizes 224,240,256,288]
                                             [--name exp-test-resolution] [--options '{"eval_size": 240}']

Each (set, draw) is the default run (auto mode, fine-tuning from Lite0) on a folder whose `train/` is the draw's
training images (validation carved from it by the hash, as tlearn does) and whose `test/` is the draw's held-out
images (bench_suite.resplit), as in exp_ensemble.py. The fine-tuned network is caught as the pipeline compares
its candidates and evaluated on validation and test at each input size (same crop_pct, so the resize before
the centre crop grows with it). Inference cost grows with the pixels: (size / 224)^2. `--options` (JSON) changes
settings of the run, e.g. `{"eval_size": 240, "train_size": 224}`: the network validated (its epoch kept) at 240.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from _common import require_shared, save
from bench_suite import draw_folder
from exp_ensemble import train_catching


def at_sizes(prepared, tuned, sizes: list[int]) -> dict[str, dict[int, float]]:
    """Validation and test accuracy of the fine-tuned network with pictures prepared at each size."""
    from tlearn.engines.torch_engine import Classifier
    from tlearn.training.eval_images import EvalImages

    scores: dict[str, dict[int, float]] = {"val": {}, "test": {}, "val_loss": {}}
    for size in sizes:
        preprocessing = dict(tuned.model_config.preprocessing) | {"input_size": [size, size]}
        config = tuned.model_config.model_copy(update={"preprocessing": preprocessing})
        evaluator = Classifier.from_state(tuned.state, config, device="cpu")
        for split in ("val", "test"):
            images = EvalImages(prepared.files(split), evaluator, workers=2, batch_size=64)
            probabilities = images.probabilities(evaluator, None)
            targets = prepared.targets[split]
            scores[split][size] = float((probabilities.argmax(axis=1) == targets).mean())
            if split == "val":
                picked = probabilities[np.arange(len(targets)), targets]
                scores["val_loss"][size] = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return scores


def caught_run(data: Path, out: Path, sizes: list[int], options: dict[str, object]) -> dict[str, object]:
    caught: dict[str, object] = {}

    def seen(context, prepared, linear, kept, outcome):
        caught["kept"] = "finetune" if kept is outcome.tuned else "linear"
        if outcome.tuned is not None:
            caught["scores"] = at_sizes(prepared, outcome.tuned, sizes)
            caught["n_val"], caught["n_test"] = len(prepared.targets["val"]), len(prepared.targets["test"])

    train_catching(data, out, seen, **options)
    return caught


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default="signs,mri")
    parser.add_argument("--draws", default="0,1,2")
    parser.add_argument("--sizes", default="224,240,256,288")
    parser.add_argument("--name", default="exp-test-resolution")
    parser.add_argument("--options", default="{}", help="settings of the run, as JSON")
    args = parser.parse_args()
    require_shared()
    sizes = [int(size) for size in args.sizes.split(",")]
    options = json.loads(args.options)
    results: dict[str, dict[str, object]] = {}
    for data_set in args.sets.split(","):
        for draw in map(int, args.draws.split(",")):
            with tempfile.TemporaryDirectory(prefix="tlearn-exp-") as temp:
                work = Path(temp)
                cell = caught_run(draw_folder(data_set, draw, work), work / "run", sizes, options)
            results.setdefault(data_set, {})[str(draw)] = cell
            print(data_set, draw, cell, flush=True)
            save(args.name, {"sizes": sizes, "options": options, "results": results})


if __name__ == "__main__":
    main()
