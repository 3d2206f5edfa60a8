"""The first run on a fresh install against its floor: `tlearn train DATA --mode linear` on an empty cache.

    python benchmarks/bench_first_run.py [--data ../shared/datasets/hymenoptera/train] [--backbone NAME]
                                         [--name first-run]

An empty cache means every backbone the run uses is built from its packaged weights, embeds every image it
needs for the first time, and (on the CPU) exports and checks its ONNX graph once. With `--backbone auto` (the
default) the run embeds the train + val images with each candidate, and every image with the winner.

* first run: `tlearn train DATA --mode linear` as a fresh process, `TLEARN_CACHE_DIR` empty;
* floor (same work): a fresh script that imports torch and timm, builds each backbone from the same packaged
  weights (channels-last, inference mode) and decodes + preprocesses + embeds, sequentially in batches of 32,
  exactly the images the first run embedded with it (read from run.json's backbone trials and embedding
  record); `floor_script_s` includes its imports, `floor_compute_s` does not;
* the second run: the same command again (everything cached, results read back).
Reported: seconds and `first_over_floor` (first run / floor script). Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save


def floor_script(work: dict) -> None:
    """Run as its own process: decode + embed `work` ({backbone: [paths]}), printing the timings as JSON."""
    started = time.perf_counter()
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from tlearn.backbones.registry import resolve_backbone

    imported = time.perf_counter()
    images = 0
    for name, files in work.items():
        model = timm.create_model(name, pretrained=False)
        packaged = torch.load(resolve_backbone(name).weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(dict(zip(model.state_dict(), packaged.values(), strict=True)))
        model = model.eval().to(memory_format=torch.channels_last)
        transform = create_transform(**resolve_data_config(model=model))
        with torch.inference_mode():
            for start in range(0, len(files), 32):
                batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in files[start : start + 32]])
                model.forward_head(
                    model.forward_features(batch.contiguous(memory_format=torch.channels_last)), pre_logits=True
                )
        images += len(files)
    print(json.dumps({"import_s": imported - started, "compute_s": time.perf_counter() - imported, "images": images}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--floor":
        floor_script(json.loads(Path(sys.argv[2]).read_text()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "hymenoptera" / "train")
    parser.add_argument("--backbone", default="auto", help="the run's --backbone (auto: every candidate)")
    parser.add_argument("--name", default="first-run")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-first-"))
    env = {"TLEARN_CACHE_DIR": str(work / "cache")}
    flags = ["--mode", "linear", "--backbone", args.backbone]
    first_s, output = run_tlearn("train", args.data, "--out", work / "first", *flags, env=env)
    second_s, _ = run_tlearn("train", args.data, "--out", work / "second", *flags, env=env)
    run = json.loads((work / "first" / "run.json").read_text())
    # What the run embedded with each backbone: the first (cheapest) and the winner every image, the other
    # candidates the train + val images they were compared on.
    files = sorted(str(path) for path in args.data.rglob("*") if path.is_file())
    trials = run.get("backbone_trials") or [{"name": run["backbone"]["arch"], "chosen": True}]
    per_backbone = {
        trial["name"]: files if index == 0 or trial.get("chosen") else files[: trial["images"]]
        for index, trial in enumerate(trials)
    }
    plan = work / "floor.json"
    plan.write_text(json.dumps(per_backbone))
    started = time.perf_counter()
    floor_out = subprocess.run(
        [sys.executable, __file__, "--floor", str(plan)], capture_output=True, text=True, check=True
    ).stdout
    floor = json.loads(floor_out.strip().splitlines()[-1])
    floor["script_s"] = time.perf_counter() - started
    save(
        args.name,
        {
            "data": str(args.data),
            "backbone": args.backbone,
            "first_run_s": round(first_s, 2),
            "second_run_s": round(second_s, 2),
            "floor_script_s": round(floor["script_s"], 2),
            "floor_compute_s": round(floor["compute_s"], 2),
            "floor_images": floor["images"],
            "first_over_floor": round(first_s / floor["script_s"], 3),
            "embedded_per_backbone": {name: len(paths) for name, paths in per_backbone.items()},
            "embedding": run.get("embedding"),
            "first_run_output": [line for line in output.splitlines() if line.startswith(("embeddings", "backbone"))],
        },
    )


if __name__ == "__main__":
    main()
