"""Houses with / without a pool (IBM PowerAI's example): train on pools/train, evaluate on the 4 test images.

python benchmarks/bench_pools.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save

TRAIN = SHARED / "pools" / "train"
TEST = SHARED / "pools" / "test"


def main() -> None:
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-pools-"))
    train_s, _ = run_tlearn("train", TRAIN, "--out", work / "run", "-q")
    run_tlearn("evaluate", work / "run" / "model", TEST, "--out", work / "eval", "-q")
    metrics = json.loads((work / "eval" / "metrics.json").read_text())["all"]
    _, predictions = run_tlearn("predict", work / "run" / "model", TEST, "--format", "json", "-k", "2", "-q")
    save(
        "pools",
        {
            "command": f"tlearn train {TRAIN} --out RUN ; tlearn evaluate RUN/model {TEST}",
            "test_accuracy": metrics["accuracy"],
            "test_correct": round(metrics["accuracy"] * metrics["n"]),
            "test_images": metrics["n"],
            "train_wall_s": round(train_s, 1),
            "predictions": [
                {
                    "image": Path(p["source"]).relative_to(TEST).as_posix(),
                    "label": p["labels"][0],
                    "probability": round(p["probabilities"][0], 4),
                }
                for p in json.loads(predictions)
            ],
        },
    )


if __name__ == "__main__":
    main()
