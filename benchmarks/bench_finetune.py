"""Fine-tuning on hymenoptera: accuracy on the untouched val folder, wall time, training images/s.

    python benchmarks/bench_finetune.py [--backbone lite0] [-- extra tlearn train flags]

Protocol: `tlearn train hymenoptera/train --mode finetune` (auto split, warm embedding cache as in normal
use after a linear run), then `tlearn evaluate` on hymenoptera/val, which training never sees.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save

TRAIN = SHARED / "hymenoptera" / "train"
VAL = SHARED / "hymenoptera" / "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--name", default=None, help="result file name (default finetune-<backbone>)")
    parser.add_argument("extra", nargs="*", help="more `tlearn train` flags, after --")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-finetune-"))
    flags = ["--mode", "finetune", "--backbone", args.backbone, *args.extra]
    train_s, output = run_tlearn("train", TRAIN, "--out", work / "run", *flags)
    run_json = json.loads((work / "run" / "run.json").read_text())
    run_tlearn("evaluate", work / "run" / "model", VAL, "--out", work / "eval", "-q")
    metrics = json.loads((work / "eval" / "metrics.json").read_text())["all"]
    history = (work / "run" / "history.csv").read_text().strip().splitlines()
    save(
        args.name or f"finetune-{args.backbone}",
        {
            "command": f"tlearn train {TRAIN} --out RUN {' '.join(flags)} ; tlearn evaluate RUN/model {VAL}",
            "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"],
            "val_images": metrics["n"],
            "train_wall_s": round(train_s, 1),
            "train_images_per_s": round(run_json["finetune"]["images_per_second"], 1),
            "best_epoch": run_json["finetune"]["best_epoch"],
            "peak_gpu_memory_mb": run_json["finetune"].get("peak_gpu_memory_mb"),
            "history": history,
            "train_output": output.strip().splitlines(),
        },
    )


if __name__ == "__main__":
    main()
