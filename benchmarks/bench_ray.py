"""`tlearn predict` on a local Ray cluster against the same command without Ray, in one run.

    python benchmarks/bench_ray.py [--name ray]

A linear model trained on hymenoptera/train and exported to ONNX predicts every image of the four shared sets
(about 1,600 files), as fresh `tlearn predict MODEL FOLDERS --format csv -q` processes, for both the ONNX file and
the model directory (PyTorch):
* local: no Ray (onnxruntime or torch on every core, decoding in worker processes);
* ray, cluster running: `ray start --head --num-cpus CORES` beforehand, then `--ray auto` (a user's cluster);
* ray, cluster started by the command: `--ray local` (start-up included).
Reported: wall seconds, their ratio to local, and whether the CSV output is byte-identical to local's.
Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
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
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-ray-"))
    run_tlearn("train", SHARED / "hymenoptera" / "train", "--out", work / "run", "--mode", "linear", "-q")
    run_tlearn("export", work / "run", "--format", "onnx", "--out", work / "model.onnx", "-q")
    cores = len(os.sched_getaffinity(0))
    results = {}
    for name, model in (("onnx", work / "model.onnx"), ("torch", work / "run")):
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
    save(args.name, {"cores": cores, "folders": [str(folder) for folder in FOLDERS], "engines": results})


if __name__ == "__main__":
    main()
