"""Fine-tuning speed against its floor: tlearn's training images/s beside a plain PyTorch loop's, in one run.

    python benchmarks/bench_finetune_floor.py [--data ../shared/datasets/hymenoptera/train] [--epochs 9]
        [--floor-passes 3] [--name finetune-floor]

* tlearn: `tlearn train DATA --mode finetune --backbone lite0 --epochs N --patience N --final-fit train` as a
  fresh process (embeddings cached beforehand). Every epoch's training images/s comes from history.csv (the
  training pass only: decoding and augmenting in the loader workers, forward, backward, optimizer; validation
  excluded). Compared: the epochs that train every layer group ("unfreeze G/G"), as in most of a default run.
* floor: the same network (timm's tf_efficientnet_lite0 with the same classes and the packaged weights), the
  same batch size, crop, threads, precision (fp32) and memory format (channels-last), AdamW over every
  parameter, batch-norm in training mode, label-smoothed cross-entropy; the images decoded, resized and cropped
  once beforehand and held as one uint8 tensor, so the loop only converts, normalises, and steps: the speed
  a training loop could reach with free data loading. Timed over `--floor-passes` passes after one warm-up
  batch, in this process after tlearn's run (so the two never share the cores).
Reported: both images/s and their ratio. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save


def floor_images_per_second(data: Path, classes: int, batch_size: int, passes: int) -> dict[str, float]:
    import numpy as np
    import timm
    import torch
    from PIL import Image

    from tlearn.backbones.registry import resolve_backbone

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=classes)
    packaged = torch.load(resolve_backbone("lite0").weights_path, map_location="cpu", weights_only=True)
    state = model.state_dict()
    for (name, value), packaged_value in zip(state.items(), packaged.values(), strict=False):
        if value.shape == packaged_value.shape:
            state[name] = packaged_value
    model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last).train()
    files = sorted(path for path in data.rglob("*") if path.is_file())
    pixels = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = 224 / min(image.size)
            image = image.resize((max(224, round(image.width * scale)), max(224, round(image.height * scale))))
            left, top = (image.width - 224) // 2, (image.height - 224) // 2
            pixels.append(np.asarray(image.crop((left, top, left + 224, top + 224))))
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    labels = torch.randint(0, classes, (len(images),))
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(batch: torch.Tensor, targets: torch.Tensor) -> None:
        inputs = batch.float().sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(images[:batch_size], labels[:batch_size])  # warm-up: allocations, first-call kernels
    seen, started = 0, time.perf_counter()
    for _ in range(passes):
        order = torch.randperm(len(images))
        for start in range(0, len(images) - batch_size + 1, batch_size):  # drop_last, as tlearn's loader
            chosen = order[start : start + batch_size]
            step(images[chosen], labels[chosen])
            seen += len(chosen)
    seconds = time.perf_counter() - started
    return {"images": seen, "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "hymenoptera" / "train")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--floor-passes", type=int, default=3)
    parser.add_argument("--name", default="finetune-floor")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-floor-"))
    run_tlearn("train", args.data, "--out", work / "linear", "--mode", "linear", "--backbone", "lite0", "-q")
    flags = ["--mode", "finetune", "--backbone", "lite0", "--epochs", args.epochs, "--patience", args.epochs]
    seconds, _ = run_tlearn("train", args.data, "--out", work / "run", *flags, "--final-fit", "train", "-q")
    run = json.loads((work / "run" / "run.json").read_text())
    rows = list(csv.DictReader((work / "run" / "history.csv").open()))
    tuned = [row for row in rows if row["stage"].startswith("unfreeze")]
    groups = tuned[-1]["stage"].split("/")[-1]
    full = [float(row["images_per_second"]) for row in tuned if row["stage"] == f"unfreeze {groups}/{groups}"]
    if not full:
        raise SystemExit(f"no epoch trained every layer group in {args.epochs} epochs; raise --epochs")
    classes = len(json.loads((work / "run" / "model" / "config.json").read_text())["classes"])
    batch_size = 32
    floor = floor_images_per_second(args.data, classes, batch_size, args.floor_passes)
    tlearn_rate = statistics.median(full)
    save(
        args.name,
        {
            "data": str(args.data),
            "command": f"tlearn train {args.data} --out RUN {' '.join(map(str, flags))} --final-fit train",
            "tlearn_wall_s": round(seconds, 1),
            "tlearn_epochs": [
                {"stage": row["stage"], "images_per_s": float(row["images_per_second"])} for row in tuned
            ],
            "tlearn_full_network_images_per_s": round(tlearn_rate, 2),
            "floor": floor,
            "tlearn_over_floor": round(tlearn_rate / floor["images_per_s"], 3),
            "finetune_record": run.get("finetune"),
        },
    )


if __name__ == "__main__":
    main()
