"""`tlearn export --format tflite` on trained models: its check against PyTorch on held-out images, the file's
size, and the TFLite interpreter's speed beside onnxruntime's on the same model.

    python benchmarks/bench_tflite.py RUN=CHECK_DIR[=CALIBRATION_DIR] [...] [--name tflite]

For each run: `tlearn export RUN --format tflite --check-data CHECK_DIR` and `--format onnx` (fresh processes;
the checks are the exports' own: max |Δprob| and top-1 agreement with PyTorch on every image of CHECK_DIR, up to
the export's limit), then in this process, one after the other, random pixels at the model's input size:
- TFLite: TensorFlow's interpreter with its default XNNPACK delegate and all cores, the NHWC input as MODEL.json
  describes it; images/s in batches of 32 (at least 2 s) and the median latency of 20 single pictures;
- onnxruntime: `tlearn.deploy.speed.time_engine` on the ONNX export, the same batches.
With a CALIBRATION_DIR, the run is also exported `--format tflite --int8 --calibration-data CALIBRATION_DIR`
(its check: answers against the fp32 TFLite file) and timed the same way.
Compare the speeds as ratios, measured in one run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import save
from tlearn.deploy.speed import BATCH_SIZE, LATENCY_CALLS, MIN_BATCHES, MIN_SECONDS, time_engine
from tlearn.engines.loading import load_engine


def export(run: Path, out: Path, check: Path, export_format: str, *more: str) -> dict[str, object]:
    started = time.perf_counter()
    command = ["export", str(run), "--out", str(out), "--format", export_format, "--check-data", str(check), *more]
    done = subprocess.run([sys.executable, "-m", "tlearn", *command], capture_output=True, text=True)
    if done.returncode and "--int8" in more:  # its own check refused it: reported, and not timed
        return {"refused": done.stderr.strip().splitlines()[-1]}
    if done.returncode:
        raise SystemExit(f"{export_format} export of {run} failed: {done.stderr.strip().splitlines()[-1]}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "checks": [line for line in done.stdout.splitlines() if line.startswith("check ")],
        "megabytes": round(sum(path.stat().st_size for path in _written(out, export_format)) / 1e6, 2),
    }


def _written(out: Path, export_format: str) -> list[Path]:
    """The export's files: a TFLite file's JSON beside it counts too."""
    return [out, out.with_suffix(".json")] if export_format == "tflite" else [out]


def time_tflite(path: Path, input_size: tuple[int, int]) -> dict[str, float]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count()).get_signature_runner()
    height, width = input_size
    images = np.random.default_rng(0).normal(size=(BATCH_SIZE, height, width, 3)).astype(np.float32)
    runner(input=images)
    runner(input=images[:1])
    runner(input=images)  # the signature runner resizes the input: warm both sizes, end on the batch
    calls, started = 0, time.perf_counter()
    while calls < MIN_BATCHES or time.perf_counter() - started < MIN_SECONDS:
        runner(input=images)
        calls += 1
    rate = calls * BATCH_SIZE / (time.perf_counter() - started)
    runner(input=images[:1])
    latencies = []
    for _ in range(LATENCY_CALLS):
        call = time.perf_counter()
        runner(input=images[:1])
        latencies.append(time.perf_counter() - call)
    return {"images_per_second": round(rate, 1), "latency_ms": round(1000 * float(np.median(latencies)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="RUN=CHECK_DIR pairs")
    parser.add_argument("--name", default="tflite")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tlearn-bench-tflite-") as temp:
        for index, pair in enumerate(args.models):
            run, check, *calibration = (Path(part) for part in pair.split("="))
            work = Path(temp) / str(index)
            work.mkdir()
            cell: dict[str, object] = {"check_data": str(check)}
            cell["tflite_export"] = export(run, work / "model.tflite", check, "tflite")
            cell["onnx_export"] = export(run, work / "model.onnx", check, "onnx")
            engine = load_engine(work / "model.onnx")
            onnx_speed = time_engine(engine)
            cell["onnxruntime"] = {
                "images_per_second": round(onnx_speed.images_per_second, 1),
                "latency_ms": round(onnx_speed.latency_ms, 2),
            }
            cell["tflite"] = time_tflite(work / "model.tflite", engine.preprocessing.input_size)
            cell["tflite_vs_onnxruntime_images_per_second"] = round(
                cell["tflite"]["images_per_second"] / cell["onnxruntime"]["images_per_second"], 3
            )
            if calibration:
                int8 = ["--int8", "--calibration-data", str(calibration[0])]
                cell["tflite_int8_export"] = export(run, work / "int8.tflite", check, "tflite", *int8)
                if "refused" in cell["tflite_int8_export"]:
                    results[str(run)] = cell
                    print(run, cell, flush=True)
                    continue
                cell["tflite_int8"] = time_tflite(work / "int8.tflite", engine.preprocessing.input_size)
                cell["tflite_int8_vs_tflite_images_per_second"] = round(
                    cell["tflite_int8"]["images_per_second"] / cell["tflite"]["images_per_second"], 3
                )
            results[str(run)] = cell
            print(run, cell, flush=True)
    save(args.name, {"batch_size": BATCH_SIZE, "results": results})


if __name__ == "__main__":
    main()
