"""Linear mode on hymenoptera: accuracy, cold/warm wall time against the floor, and the tutorial baseline.

    python benchmarks/bench_linear.py [--skip-baseline]

Protocol: train on hymenoptera/train only (`--mode linear`, auto split), evaluate with `tlearn evaluate` on
hymenoptera/val (never seen in training). Measured in one run, on this machine:

* floor: decode + preprocess + one eager Lite0 forward (batch 32, channels-last) over the 245 training
  images, sequentially, as a fresh script: `floor_compute_s` excludes the torch/timm imports,
  `floor_script_s` includes them;
* cold (`cold_cli_s`): `tlearn train` as a fresh process with no embedding of these images cached, the
  backbone already prepared on this machine (its converted weights and checked ONNX graph in the cache, as
  after any earlier run): the everyday "new data" case; embeddings on onnxruntime, torch never imported;
* cold, PyTorch engine (`cold_torch_cli_s`): the same with `TLEARN_EMBEDDING_ENGINE=torch`;
* first use (`first_use_cli_s`): a completely empty cache: builds the backbone and exports and checks its
  ONNX graph once (`onnx_export_s` of it), then embeds on onnxruntime;
* cold through the Python API with torch already imported (`cold_api_s`, backbone prepared);
* warm: `tlearn train` again, every embedding cached (`warm_cli_s`);
* baseline: PyTorch's transfer-learning tutorial loop ("ConvNet as fixed feature extractor") on the same
  Lite0 weights: 10 epochs, SGD on the head, frozen backbone re-run on every image every epoch, val after
  each epoch, batch size 4.
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

TRAIN = SHARED / "hymenoptera" / "train"
VAL = SHARED / "hymenoptera" / "val"


def floor_script() -> None:
    """The floor, run as its own process: prints {"import_s", "compute_s"} as JSON."""
    started = time.perf_counter()
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from tlearn.backbones.registry import resolve_backbone

    imported = time.perf_counter()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    packaged = torch.load(resolve_backbone("lite0").weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict(), packaged.values(), strict=True)))
    model = model.eval().to(memory_format=torch.channels_last)
    transform = create_transform(**resolve_data_config(model=model))
    files = sorted(path for path in TRAIN.rglob("*") if path.is_file())
    compute_started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(files), 32):
            batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in files[start : start + 32]])
            model.forward_head(
                model.forward_features(batch.contiguous(memory_format=torch.channels_last)), pre_logits=True
            )
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "model_s": compute_started - imported,
                "compute_s": done - compute_started,
                "images": len(files),
            }
        )
    )


def measure_floor() -> dict[str, float]:
    started = time.perf_counter()
    output = subprocess.run([sys.executable, __file__, "--floor"], capture_output=True, text=True, check=True).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    figures["script_s"] = time.perf_counter() - started
    return figures


def tutorial_baseline() -> dict[str, float]:
    """PyTorch's transfer-learning tutorial loop, fixed-feature-extractor variant, on Lite0."""
    import timm
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from tlearn.backbones.registry import resolve_backbone

    torch.manual_seed(0)
    started = time.perf_counter()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    packaged = torch.load(resolve_backbone("lite0").weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict(), packaged.values(), strict=True)))
    for parameter in model.parameters():
        parameter.requires_grad = False
    model.reset_classifier(2)  # the new head is the only trainable layer
    normalize = transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    loaders = {
        "train": torch.utils.data.DataLoader(
            datasets.ImageFolder(
                TRAIN,
                transforms.Compose(
                    [
                        transforms.RandomResizedCrop(224),
                        transforms.RandomHorizontalFlip(),
                        transforms.ToTensor(),
                        normalize,
                    ]
                ),
            ),
            batch_size=4,
            shuffle=True,
            num_workers=1,
        ),
        "val": torch.utils.data.DataLoader(
            datasets.ImageFolder(
                VAL,
                transforms.Compose(
                    [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
                ),
            ),
            batch_size=4,
            shuffle=False,
            num_workers=1,
        ),
    }
    optimizer = torch.optim.SGD(model.get_classifier().parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    accuracies = []
    for _ in range(10):
        for phase in ("train", "val"):
            model.train(phase == "train")
            correct = 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                correct += int((outputs.argmax(1) == labels).sum())
            if phase == "train":
                scheduler.step()
            else:
                accuracies.append(correct / len(loaders["val"].dataset))
    return {
        "seconds": time.perf_counter() - started,
        "final_val_accuracy": accuracies[-1],
        "best_val_accuracy": max(accuracies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-baseline", action="store_true", help="skip the ~3-minute tutorial loop")
    args = parser.parse_args()
    if args.floor:
        floor_script()
        return
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-linear-"))

    def train(name: str, cache: str, **env: str) -> tuple[float, str]:
        return run_tlearn(
            "train",
            TRAIN,
            "--out",
            work / name,
            "--mode",
            "linear",
            "--backbone",  # the floor is Lite0's: the default would also compare Lite1 and Lite2
            "lite0",
            "-q",
            env={"TLEARN_CACHE_DIR": str(work / cache), **env},
        )

    floor = measure_floor()
    first_use_s, _ = train("first-use", "first-cache")
    first_json = json.loads((work / "first-use" / "run.json").read_text())
    records = [json.loads(path.read_text()) for path in (work / "first-cache" / "onnx").glob("*.json")]
    for cache in ("cache", "torch-cache", "api-cache"):  # the backbone prepared, no embedding cached
        for prepared in ("backbones", "onnx"):
            shutil.copytree(work / "first-cache" / prepared, work / cache / prepared)
    cold_cli_s, cold_output = train("cold", "cache")
    cold_torch_cli_s, _ = train("cold-torch", "torch-cache", TLEARN_EMBEDDING_ENGINE="torch")
    warm_cli_s, _ = train("warm", "cache")
    run_json = json.loads((work / "cold" / "run.json").read_text())
    torch_json = json.loads((work / "cold-torch" / "run.json").read_text())
    cold_cache = {"TLEARN_CACHE_DIR": str(work / "cache")}
    evaluate_s, _ = run_tlearn("evaluate", work / "cold" / "model", VAL, "--out", work / "eval", "-q", env=cold_cache)
    accuracy = json.loads((work / "eval" / "metrics.json").read_text())["all"]["accuracy"]
    run_tlearn("evaluate", work / "cold-torch" / "model", VAL, "--out", work / "eval-torch", "-q", env=cold_cache)
    torch_accuracy = json.loads((work / "eval-torch" / "metrics.json").read_text())["all"]["accuracy"]

    os.environ["TLEARN_CACHE_DIR"] = str(work / "api-cache")
    import tlearn
    import tlearn.backbones.timm_models

    started = time.perf_counter()
    tlearn.train(TRAIN, out=work / "api", quiet=True, mode="linear")
    cold_api_s = time.perf_counter() - started

    baseline = None if args.skip_baseline else tutorial_baseline()
    save(
        "linear",
        {
            "command": f"tlearn train {TRAIN} --out RUN --mode linear --backbone lite0 ; "
            f"tlearn evaluate RUN/model {VAL}",
            "val_accuracy": accuracy,
            "val_accuracy_torch_engine": torch_accuracy,
            "val_images": json.loads((work / "eval" / "metrics.json").read_text())["all"]["n"],
            "floor_compute_s": round(floor["compute_s"], 2),
            "floor_import_s": round(floor["import_s"], 2),
            "floor_script_s": round(floor["script_s"], 2),
            "cold_cli_s": round(cold_cli_s, 2),
            "cold_torch_cli_s": round(cold_torch_cli_s, 2),
            "first_use_cli_s": round(first_use_s, 2),
            "first_use_embedding": first_json["embedding"],
            "onnx_export_s": records[0].get("exporter_seconds") if records else None,
            "cold_api_s": round(cold_api_s, 2),
            "warm_cli_s": round(warm_cli_s, 2),
            "evaluate_cli_s": round(evaluate_s, 2),
            "cold_cli_over_floor_script": round(cold_cli_s / floor["script_s"], 3),
            "cold_api_over_floor_compute": round(cold_api_s / floor["compute_s"], 3),
            "cold_cli_over_floor_compute": round(cold_cli_s / floor["compute_s"], 3),
            "cold_torch_cli_over_floor_compute": round(cold_torch_cli_s / floor["compute_s"], 3),
            "embedding_images_per_s_cold_cli": round(
                run_json["embedding"]["computed"] / run_json["embedding"]["seconds"], 1
            ),
            "embedding_images_per_s_cold_torch_cli": round(
                torch_json["embedding"]["computed"] / torch_json["embedding"]["seconds"], 1
            ),
            "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
            "train_output": cold_output.strip().splitlines(),
            "baseline": baseline
            and {
                "seconds": round(baseline["seconds"], 1),
                "final_val_accuracy": baseline["final_val_accuracy"],
                "best_val_accuracy": baseline["best_val_accuracy"],
                "seconds_over_cold_cli": round(baseline["seconds"] / cold_cli_s, 1),
            },
        },
    )


if __name__ == "__main__":
    main()
