"""Inference throughput and accuracy of torch eager, ONNX fp32 and ONNX INT8 on hymenoptera val.

    python benchmarks/bench_inference.py [--rounds 3]

Protocol: `tlearn train` on hymenoptera/train (linear mode, Lite0); `tlearn export` to ONNX fp32 and to INT8
(static, calibrated on hymenoptera/train, checked on hymenoptera/val); then, in one process, for each engine:

* pre-decoded: img/s of `engine.probabilities` on the 153 val images already decoded and preprocessed
  (uint8 (32, 224, 224, 3) batches; the ONNX engines include the numpy normalisation), after one warm-up batch;
* end-to-end: img/s of `engine.predict_files_probabilities` on the val JPEG files, batch 32, decoding in
  worker processes in parallel with the model (what `tlearn predict` and `tlearn evaluate` do);
* accuracy on hymenoptera/val (never seen in training or calibration).

Engines run in turns, `--rounds` times, and the median round is reported (the machine may be shared).
torch eager is the plain timm model loaded from the model directory (eval mode, channels-last), the way a
hand-written script runs it; torch tlearn is `tlearn.Classifier` as `tlearn predict` loads it (batch norm folded
into the convolutions). torch and onnxruntime both use all cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED, require_shared, run_tlearn, save
from tlearn.engines.options import PredictOptions

TRAIN = SHARED / "hymenoptera" / "train"
VAL = SHARED / "hymenoptera" / "val"
BATCH = 32


def _plain_timm_engine(run: Path):
    """The model directory's weights in a plain timm model (no batch-norm folding), behind tlearn's interface."""
    import timm
    import torch
    from safetensors.torch import load_file

    from tlearn.engines.torch_engine import Classifier
    from tlearn.runs.model_dir import read_config

    config = read_config(run / "model")
    model = timm.create_model(config.arch, pretrained=False, num_classes=len(config.classes))
    model.load_state_dict(load_file(run / "model" / "model.safetensors"))
    return Classifier(model, config, torch.device("cpu"), run / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measurements per engine (median reported)")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-inference-"))
    train_s, _ = run_tlearn("train", TRAIN, "--out", work / "run", "--backbone", "lite0", "-q")  # the protocol's Lite0
    exports = {}
    for name, options in {"onnx_fp32": [], "onnx_int8": ["--int8", "--calibration-data", TRAIN]}.items():
        command = [sys.executable, "-m", "tlearn", "export", work / "run", "--out", work / f"{name}.onnx"]
        started = time.perf_counter()
        done = subprocess.run(
            [*map(str, command), "--check-data", str(VAL), *map(str, options), "-q"], capture_output=True, text=True
        )
        exports[name] = {"seconds": round(time.perf_counter() - started, 1), "output": done.stdout.strip().splitlines()}
        if done.returncode:  # the export's own check refused it: reported, and that engine is not measured
            exports[name]["refused"] = done.stderr.strip().splitlines()[-1]
        else:
            exports[name]["megabytes"] = round((work / f"{name}.onnx").stat().st_size / 1e6, 2)

    from tlearn.data.decoding import BatchDecoder, default_workers
    from tlearn.data.discovery import list_image_files
    from tlearn.engines.loading import load_engine
    from tlearn.util.progress import Progress

    refused = {name for name, facts in exports.items() if "refused" in facts}
    engines = {
        "torch_eager": _plain_timm_engine(work / "run"),
        "torch_tlearn": load_engine(work / "run", device="cpu"),
        **{name: load_engine(work / f"{name}.onnx") for name in ("onnx_fp32", "onnx_int8") if name not in refused},
    }
    files = list_image_files([VAL])
    labels = np.asarray([engines["torch_eager"].classes.index(path.parent.name) for path in files])
    quiet = Progress(quiet=True)
    workers = default_workers()
    with BatchDecoder(files, engines["torch_eager"].preprocessing, batch_size=BATCH, workers=workers) as batches:
        pixels = np.concatenate([batch.pixels for batch in batches])  # (153, 224, 224, 3) uint8
    results: dict[str, dict[str, list[float]]] = {name: {"decoded": [], "files": []} for name in engines}
    accuracy: dict[str, float] = {}
    for engine in engines.values():
        engine.probabilities(pixels[:BATCH])  # warm-up
    for _ in range(args.rounds):
        for name, engine in engines.items():
            started = time.perf_counter()
            for start in range(0, len(pixels), BATCH):
                engine.probabilities(pixels[start : start + BATCH])
            results[name]["decoded"].append(len(pixels) / (time.perf_counter() - started))
            started = time.perf_counter()
            probabilities, _ = engine.predict_files_probabilities(
                files, PredictOptions(batch_size=BATCH, workers=workers), progress=quiet
            )
            results[name]["files"].append(len(files) / (time.perf_counter() - started))
            accuracy[name] = float((probabilities.argmax(1) == labels).mean())
    summary = {
        name: {
            "images_per_s_predecoded": round(statistics.median(values["decoded"]), 2),
            "images_per_s_end_to_end": round(statistics.median(values["files"]), 2),
            "val_accuracy": round(accuracy[name], 4),
            "rounds_predecoded": [round(v, 2) for v in values["decoded"]],
            "rounds_end_to_end": [round(v, 2) for v in values["files"]],
        }
        for name, values in results.items()
    }
    eager = summary["torch_eager"]
    for name in [name for name in summary if name != "torch_eager"]:
        summary[name]["speedup_predecoded_vs_torch_eager"] = round(
            summary[name]["images_per_s_predecoded"] / eager["images_per_s_predecoded"], 2
        )
        summary[name]["speedup_end_to_end_vs_torch_eager"] = round(
            summary[name]["images_per_s_end_to_end"] / eager["images_per_s_end_to_end"], 2
        )
        summary[name]["accuracy_points_vs_torch_eager"] = round(
            100 * (summary[name]["val_accuracy"] - eager["val_accuracy"]), 2
        )
    save(
        "inference",
        {
            "protocol": "train on hymenoptera/train, export, measure on hymenoptera/val (153 images), batch 32",
            "val_images": len(files),
            "decode_workers": workers,
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "train_cli_s": round(train_s, 1),
            "exports": exports,
            "engines": summary,
        },
    )


if __name__ == "__main__":
    main()
