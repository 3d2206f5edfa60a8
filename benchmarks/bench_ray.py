"""`tlearn predict` on a local Ray cluster against the same command without Ray, in one run.

    python benchmarks/bench_ray.py [--name ray]

A linear model trained on hymenoptera/train and exported to ONNX predicts every image of the four shared sets
(about 1,600 files), as fresh `tlearn predict MODEL FOLDERS --format csv -q` processes, for both the ONNX file and
the model directory (PyTorch):
* local: no Ray (onnxruntime or torch on every core, decoding in worker processes);
* ray, cluster running: `ray start --head --num-cpus CORES` beforehand, then `--ray auto` (a user's cluster);
* ray, cluster started by the command: `--ray local` (start-up included).
Reported: wall seconds, their ratio to local, and whether the CSV output is byte-identical to local's.

Then the embedding step of training (`--train-folder`, default hymenoptera: 398 images): `tlearn train FOLDER
--mode linear` with no embedding cached (the backbone's weights and checked ONNX graph copied into each fresh
cache, as after any earlier run), locally and with `--ray auto` on the running cluster: wall seconds and whether
`predictions.csv` and the metrics came out identical. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save

FOLDERS = [SHARED / name for name in ("hymenoptera", "pools", "signs", "mri")]


def predict(model: Path, *extra: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tlearn", "predict", str(model), *map(str, FOLDERS), "--format", "csv", "-q", *extra],
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):
        sys.exit(f"predict {extra} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="ray")
    parser.add_argument("--train-folder", type=Path, default=SHARED / "hymenoptera")
    parser.add_argument("--only-training", action="store_true", help="skip the predict comparison")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-ray-"))
    if not args.only_training:
        run_tlearn("train", SHARED / "hymenoptera" / "train", "--out", work / "run", "--mode", "linear", "-q")
        run_tlearn("export", work / "run", "--format", "onnx", "--out", work / "model.onnx", "-q")
    cores = len(os.sched_getaffinity(0))
    results = {}
    for name, model in () if args.only_training else (("onnx", work / "model.onnx"), ("torch", work / "run")):
        local_s, local_out = predict(model)
        subprocess.run(
            ["ray", "start", "--head", f"--num-cpus={cores}", "--include-dashboard=false"],
            check=True,
            capture_output=True,
        )
        try:
            running_s, running_out = predict(model, "--ray", "auto")
        finally:
            subprocess.run(["ray", "stop", "--force"], capture_output=True)
        started_s, started_out = predict(model, "--ray", "local")
        results[name] = {
            "images": len({line.split(",")[0] for line in local_out.splitlines()[1:]}),
            "local_s": round(local_s, 2),
            "ray_cluster_running_s": round(running_s, 2),
            "ray_cluster_started_s": round(started_s, 2),
            "running_over_local": round(running_s / local_s, 3),
            "started_over_local": round(started_s / local_s, 3),
            "identical_output": running_out == local_out and started_out == local_out,
        }
        print(name, results[name], flush=True)
    training = train_embedding(work, args.train_folder, cores)
    print("training", training, flush=True)
    save(
        args.name,
        {"cores": cores, "folders": [str(folder) for folder in FOLDERS], "engines": results, "training": training},
    )


def train_embedding(work: Path, folder: Path, cores: int) -> dict[str, object]:
    """A cold linear run's embedding step, locally and on a running cluster (the graph prepared in both)."""
    prepared = work / "prepared-cache"  # a first run on the folder: the backbone's weights and graph
    run_tlearn(
        "train",
        folder,
        "--out",
        work / "prepare",
        "--mode",
        "linear",
        "--embedding-engine",
        "onnx",  # exported even below the image count at which a local run exports on its own
        "-q",
        env={"TLEARN_CACHE_DIR": str(prepared)},
    )
    runs = {}
    for name, extra in (("local", ()), ("ray", ("--ray", "auto"))):
        cache = work / f"cache-{name}"
        cache.mkdir()
        for kept in ("backbones", "onnx"):
            shutil.copytree(prepared / kept, cache / kept)
        if name == "ray":
            subprocess.run(
                ["ray", "start", "--head", f"--num-cpus={cores}", "--include-dashboard=false"],
                check=True,
                capture_output=True,
            )
        try:
            seconds, _ = run_tlearn(
                "train",
                folder,
                "--out",
                work / f"train-{name}",
                "--mode",
                "linear",
                "-q",
                *extra,
                env={"TLEARN_CACHE_DIR": str(cache)},
            )
        finally:
            if name == "ray":
                subprocess.run(["ray", "stop", "--force"], capture_output=True)
        metrics = json.loads((work / f"train-{name}" / "metrics.json").read_text())
        runs[name] = {
            "seconds": round(seconds, 2),
            "metrics": metrics,
            "predictions": (work / f"train-{name}" / "predictions.csv").read_text(),
        }
    return {
        "folder": str(folder),
        "local_s": runs["local"]["seconds"],
        "ray_s": runs["ray"]["seconds"],
        "ray_over_local": round(runs["ray"]["seconds"] / runs["local"]["seconds"], 3),
        "identical_predictions": runs["ray"]["predictions"] == runs["local"]["predictions"],
        "identical_metrics": _figures(runs["ray"]["metrics"]) == _figures(runs["local"]["metrics"]),
    }


def _figures(metrics: dict[str, object]) -> dict[str, object]:
    """The metrics without timings."""
    return {key: value for key, value in metrics.items() if "second" not in key and "time" not in key}


if __name__ == "__main__":
    main()
