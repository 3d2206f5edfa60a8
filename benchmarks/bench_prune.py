"""Channel pruning (`--prune`): a fine-tuned Lite0 against the same network pruned to 1/P of its compute and
fine-tuned to recover, on the shared sets' held-out folders, with both models' ONNX Runtime speed.

    python benchmarks/bench_prune.py [--sets signs,mri] [--prune 1.5] [--teacher-share 0.5] [--name prune]

Per set, each as a fresh `tlearn train SET/train` process, evaluated once on the held-out folder (as
bench_suite.py does):
- full: `--backbone lite0 --mode finetune` (the network the default command fine-tunes, without its budget);
- pruned: `--backbone lite0 --prune P --teacher FULL_RUN --teacher-share S` (recovery learns from the full
  network's answers and the labels; S = 0 learns from the labels alone).
Then both models are exported to ONNX and timed in this process, one after the other (`tlearn.deploy.speed`:
batches of 32, and one image at a time for the latency): compare the speeds as a ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import require_shared, save
from bench_suite import SETS, run_config
from tlearn.deploy.speed import measure_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default="signs,mri")
    parser.add_argument("--prune", type=float, default=1.5)
    parser.add_argument("--teacher-share", type=float, default=0.5)
    parser.add_argument("--name", default="prune")
    args = parser.parse_args()
    require_shared()
    results: dict[str, dict[str, object]] = {}
    for data_set in args.sets.split(","):
        if data_set not in SETS:
            raise SystemExit(f"unknown set {data_set!r}; expected one of {', '.join(SETS)}")
        with tempfile.TemporaryDirectory(prefix="tlearn-prune-") as temp:
            work = Path(temp)
            tuned = ["--backbone", "lite0", "--mode", "finetune"]
            cells = {"full": run_config(data_set, tuned, work / "full")}
            pruned = [
                *tuned,
                "--prune",
                str(args.prune),
                "--teacher",
                str(work / "full" / "run"),
                "--teacher-share",
                str(args.teacher_share),
            ]
            cells["pruned"] = run_config(data_set, pruned, work / "pruned")
            for name in cells:
                speed = measure_speed(work / name / "run")
                cells[name]["onnx_images_per_second"] = round(speed.images_per_second, 1)
                cells[name]["onnx_latency_ms"] = round(speed.latency_ms, 2)
        cells["speedup"] = round(cells["pruned"]["onnx_images_per_second"] / cells["full"]["onnx_images_per_second"], 3)
        cells["accuracy_change"] = round(cells["pruned"]["accuracy"] - cells["full"]["accuracy"], 4)
        results[data_set] = cells
        print(data_set, cells["full"]["accuracy"], cells["pruned"]["accuracy"], cells["speedup"], flush=True)
        save(args.name, {"prune": args.prune, "teacher_share": args.teacher_share, "results": results})


if __name__ == "__main__":
    main()
