"""When does exporting a backbone to ONNX pay for itself within one run? (`EXPORT_MIN_IMAGES` in
tlearn/backbones/features.py.)

    python benchmarks/bench_export_breakeven.py [--backbones lite0,lite1,lite2] [--images 256] [--name export-breakeven]

For each backbone, on the same preprocessed images (hymenoptera/train, decoded once, outside the timings), in
one process: PyTorch's embedding rate (the `Backbone` a run uses, batches of 32, after one warm-up batch), the
export + check of the ONNX graph as a run does it (`export_embedding_graph`, `check_against_torch` on a batch),
and onnxruntime's rate on the same images. The export pays within a run that computes more than
`breakeven_images` = export seconds / (1 / torch rate - 1 / onnx rate) images (never, when onnxruntime is not
faster). Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED, require_shared, save

BATCH = 32


def rate(embed, pixels: np.ndarray) -> float:
    embed(pixels[:BATCH])  # warm-up: first-call allocations and kernel choices
    started = time.perf_counter()
    for start in range(0, len(pixels), BATCH):
        embed(pixels[start : start + BATCH])
    return len(pixels) / (time.perf_counter() - started)


def measure(name: str, count: int) -> dict[str, float | None]:
    from tlearn.backbones.devices import resolve_device
    from tlearn.backbones.onnx_export import check_against_torch, export_embedding_graph
    from tlearn.backbones.onnx_models import OnnxBackbone
    from tlearn.backbones.registry import resolve_backbone
    from tlearn.backbones.timm_models import load_backbone
    from tlearn.data.discovery import list_image_files
    from tlearn.deploy.verify import decode_images
    from tlearn.util.progress import Progress

    with tempfile.TemporaryDirectory(prefix="tlearn-breakeven-") as cache:
        backbone = load_backbone(
            resolve_backbone(name), cache_root=Path(cache), device=resolve_device("cpu"), progress=Progress(quiet=True)
        )
        files = list_image_files([SHARED / "hymenoptera" / "train"])[:count]
        pixels = decode_images(files, backbone.info.preprocessing)
        torch_rate = rate(backbone.embed, pixels)
        started = time.perf_counter()
        payload, _ = export_embedding_graph(backbone)
        onnx = OnnxBackbone.from_bytes(payload, backbone.info, threads=2)
        passed, _ = check_against_torch(onnx, pixels[:BATCH], backbone.embed(pixels[:BATCH]))
        export_seconds = time.perf_counter() - started
        onnx_rate = rate(onnx.embed, pixels)
    gain = 1 / torch_rate - 1 / onnx_rate  # seconds saved per image
    return {
        "images": len(pixels),
        "torch_images_per_s": round(torch_rate, 1),
        "onnx_images_per_s": round(onnx_rate, 1),
        "export_and_check_s": round(export_seconds, 2),
        "check_passed": bool(passed),
        "breakeven_images": round(export_seconds / gain) if gain > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="lite0,lite1,lite2")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--name", default="export-breakeven")
    args = parser.parse_args()
    require_shared()
    results = {name: measure(name, args.images) for name in args.backbones.split(",")}
    save(args.name, {"results": results})


if __name__ == "__main__":
    main()
