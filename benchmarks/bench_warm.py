"""A warm training run: what `tlearn train` costs when nothing changed since the last run.

    python benchmarks/bench_warm.py [--data ../shared/datasets/hymenoptera/train] [--repeats 5] [--name warm]

Three kinds of fresh `tlearn train DATA --mode linear` processes, each `--repeats` times, alternating so the
machine's drift hits them alike:
* "results cleared": every embedding is cached but no computed result (the result cache is emptied first): the
  C searches, head fits, metrics, audit and figures are computed, as before results were kept;
* "warm": nothing changed since the previous run: everything is read back;
* "start-up floor": `python -c "import tlearn.cli.main"`, the interpreter and the command line's imports.
The embedding cache is a private copy filled once before timing. Reported: median and spread of each, and the
warm run's imports (whether scikit-learn and matplotlib were loaded). Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "hymenoptera" / "train")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="warm")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-warm-"))
    env = {"TLEARN_CACHE_DIR": str(work / "cache")}
    train = ("train", args.data, "--mode", "linear", "--overwrite", "--quiet")
    try:
        run_tlearn(*train, "--out", work / "fill", env=env)  # embeddings (and the ONNX graphs) into the cache
        times: dict[str, list[float]] = {"results cleared": [], "warm": [], "start-up floor": []}
        for repeat in range(args.repeats):
            (work / "cache" / "results.sqlite").unlink(missing_ok=True)
            times["results cleared"].append(run_tlearn(*train, "--out", work / f"cleared{repeat}", env=env)[0])
            times["warm"].append(run_tlearn(*train, "--out", work / f"warm{repeat}", env=env)[0])
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import tlearn.cli.main"], check=True, env={**os.environ, **env})
            times["start-up floor"].append(time.perf_counter() - started)
        imported = (
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys, tlearn; tlearn.train(sys.argv[1], out=sys.argv[2], mode='linear', overwrite=True, "
                    "quiet=True); print(sorted(name for name in ('sklearn', 'matplotlib', 'scipy.stats', 'torch') "
                    "if name in sys.modules))",
                    str(args.data),
                    str(work / "imports"),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **env},
            )
            .stdout.strip()
            .splitlines()[-1]
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        name: {"median_s": round(statistics.median(values), 3), "runs_s": [round(value, 3) for value in values]}
        for name, values in times.items()
    }
    save(
        args.name,
        {
            "data": str(args.data),
            "repeats": args.repeats,
            "seconds": summary,
            "warm_over_cleared": round(summary["warm"]["median_s"] / summary["results cleared"]["median_s"], 3),
            "warm_run_imports": imported,
        },
    )


if __name__ == "__main__":
    main()
