"""The suite that decides defaults: four shared data sets × {linear, finetune, the default}, and the peer.

    python benchmarks/bench_suite.py [--sets hymenoptera,pools,signs,mri] [--configs linear,finetune,default]
                                     [--config NAME="--flag value ..."] [--fastai] [--resplits 3] [--name suite]

Protocol (the same for every configuration): `tlearn train SET/train` as a fresh process with the
configuration's flags (nothing else), then `tlearn evaluate` once on the held-out folder (`val/` for
hymenoptera, `test/` for the others), which training never sees. The embedding cache is warm after the first
configuration of a set, as in normal use; wall times are the `tlearn train` process's.

Reported per (set, configuration): accuracy with its 95% Wilson interval, macro F1 with its 95% bootstrap
interval, correct / images, train seconds, and for auto runs which model was kept. `--fastai` adds fastai's
default recipe (its head + `fine_tune(5)`) on the very same Lite0 weights and folders, timed the same way
(needs `pip install fastai`, a benchmark-only dependency). Writes benchmarks/results/<name>.json and
<name>.md (one Markdown table).

`--resplits N` measures each (set, configuration) on N splits: the published one, then N - 1 redraws that pool
the set's training and held-out images and deal them again per class in the published proportions (seeded by
the draw, the same for every configuration; copies in a temporary folder). On a few hundred images one held-out
split moves accuracy by 1-2 points; the table then shows the mean ± sd over the draws, and the JSON keeps each
draw's cell under "draws" (the published split's figures stay the cell's own).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, SHARED, require_shared, run_tlearn, save
from tlearn.runs.summary import read_run_summary

SETS = {"hymenoptera": "val", "pools": "test", "signs": "test", "mri": "test"}
CONFIGS = {"linear": ["--mode", "linear"], "finetune": ["--mode", "finetune"], "default": []}


def resplit(data_set: str, draw: int, out: Path) -> tuple[Path, Path]:
    """(train, held-out) folders of redraw `draw` of SET (0: the published folders, not copied)."""
    train, held_out = SHARED / data_set / "train", SHARED / data_set / SETS[data_set]
    if draw == 0:
        return train, held_out
    rng = np.random.default_rng(draw)
    for folder in sorted(path for path in train.iterdir() if path.is_dir()):
        kept = sorted(path for path in folder.rglob("*") if path.is_file())
        shown = sorted(path for path in (held_out / folder.name).rglob("*") if path.is_file())
        pooled = [kept[index] for index in rng.permutation(len(kept))] + shown
        order = rng.permutation(len(pooled))
        for rank, index in enumerate(order):
            target = out / ("train" if rank < len(kept) else "held") / folder.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pooled[index], target / f"{rank:05d}{pooled[index].suffix}")
    return out / "train", out / "held"


def draw_folder(data_set: str, draw: int, work: Path) -> Path:
    """WORK/data with `train/` (the draw's training images) and `test/` (its held-out images), as a user's
    pre-split folder: tlearn carves validation from train/ and measures the test split once."""
    train, held_out = resplit(data_set, draw, work / "draw")
    shutil.copytree(train, work / "data" / "train")
    shutil.copytree(held_out, work / "data" / "test")
    return work / "data"


def run_config(data_set: str, flags: list[str], work: Path, draw: int = 0) -> dict[str, object]:
    """Train on SET/train with `flags`, evaluate once on the held-out folder; the figures of one table cell."""
    train, held_out = resplit(data_set, draw, work / "data")
    seconds, _ = run_tlearn("train", train, "--out", work / "run", "-q", *flags)
    run_tlearn("evaluate", work / "run", held_out, "--out", work / "eval", "-q")
    metrics = json.loads((work / "eval" / "metrics.json").read_text())["all"]
    summary = read_run_summary(work / "run" / "run.json")
    return {
        "accuracy": metrics["accuracy"],
        "accuracy_interval": metrics["accuracy_interval"],
        "macro_f1": metrics["macro_f1"],
        "macro_f1_interval": metrics["macro_f1_interval"],
        "correct": round(metrics["accuracy"] * metrics["n"]),
        "images": metrics["n"],
        "train_seconds": round(seconds, 1),
        "model": summary.model,
        "backbone": summary.backbone.get("name"),
        "backbone_choice": summary.backbone_choice,
        "skipped_finetune": summary.finetune_skipped,
        "validation_choice": summary.selection.reason if summary.selection else None,
        "finetune": summary.finetune.model_dump() if summary.finetune else None,
    }


def run_fastai(data_set: str, work: Path) -> dict[str, object]:
    """fastai's default recipe on the same Lite0 weights, as a fresh process (see `fastai_script`)."""
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, __file__, "--fastai-run", data_set, "--work", str(work)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    return {**figures, "train_seconds": round(seconds, 1)}


def fastai_script(data_set: str, work: Path) -> None:
    """fastai: `vision_learner` with its own head on timm's tf_efficientnet_lite0 carrying the same ImageNet
    weights tlearn embeds, `fine_tune(5)` with fastai's defaults (20% of train/ held out for validation,
    Resize(224), batch 32 as in tlearn), then accuracy on the held-out folder. Prints one JSON line."""
    import numpy as np
    import torch
    from fastai.vision.all import ImageDataLoaders, Normalize, Resize, accuracy, vision_learner

    from tlearn.backbones.registry import resolve_backbone
    from tlearn.evaluation.intervals import wilson_interval

    torch.manual_seed(0)
    train = SHARED / data_set / "train"
    # The weights' own normalisation ((x - 0.5) / 0.5, as timm's tf_efficientnet_lite0 config says): fastai adds
    # a Normalize only for pretrained=True, and pretrained=True would download the weights from the hub.
    lite0_stats = ([0.5] * 3, [0.5] * 3)
    dls = ImageDataLoaders.from_folder(
        train,
        train=".",
        valid_pct=0.2,
        seed=0,
        item_tfms=Resize(224),
        batch_tfms=Normalize.from_stats(*lite0_stats),
        bs=32,
        num_workers=1,
    )
    learn = vision_learner(dls, "tf_efficientnet_lite0", pretrained=False, normalize=False, metrics=accuracy)
    packaged = torch.load(resolve_backbone("lite0").weights_path, map_location="cpu", weights_only=True)
    import timm

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = dict(zip(reference.state_dict(), packaged.values(), strict=True))
    body = learn.model[0].model
    missing, _unexpected = body.load_state_dict(mapped, strict=False)
    assert not [key for key in missing if "classifier" not in key], missing
    learn.fine_tune(5)
    held_out = SHARED / data_set / SETS[data_set]
    test_files = sorted(path for path in held_out.rglob("*") if path.is_file())
    test_dl = dls.test_dl(test_files, with_labels=True)
    probabilities, targets = learn.get_preds(dl=test_dl)
    correct = int((probabilities.argmax(1) == targets).sum())
    n = len(targets)
    print(
        json.dumps(
            {
                "accuracy": correct / n,
                "accuracy_interval": list(wilson_interval(correct, n)),
                "correct": correct,
                "images": n,
                "classes_match": list(dls.vocab) == sorted(p.name for p in held_out.iterdir()),
                "macro_f1": float(_macro_f1(np.asarray(targets), np.asarray(probabilities.argmax(1)))),
            }
        )
    )


def _macro_f1(labels, predictions) -> float:
    from sklearn.metrics import f1_score

    return f1_score(labels, predictions, average="macro")


def markdown(results: dict[str, dict[str, dict[str, object]]], configs: list[str]) -> str:
    header = "| data set | " + " | ".join(configs) + " |"
    rule = "|---|" + "---|" * len(configs)
    lines = [header, rule]
    for data_set, cells in results.items():
        row = []
        for config in configs:
            cell = cells.get(config)
            if not cell or "error" in cell:
                row.append(cell.get("error", "–") if cell else "–")
                continue
            low, high = cell["accuracy_interval"]
            kept = f", kept {cell['model']}" if config == "default" and cell.get("model") else ""
            if "draws" in cell:
                accuracies = [draw["accuracy"] for draw in cell["draws"]]
                row.append(
                    f"**{100 * cell['mean_accuracy']:.1f} ± {100 * cell['sd_accuracy']:.1f}%** over "
                    f"{len(accuracies)} splits ({', '.join(f'{100 * value:.1f}' for value in accuracies)}) · "
                    f"{cell['mean_train_seconds']:.0f} s{kept}"
                )
                continue
            row.append(
                f"**{100 * cell['accuracy']:.1f}%** ({cell['correct']}/{cell['images']}, {100 * low:.1f}–"
                f"{100 * high:.1f}) F1 {cell['macro_f1']:.3f} · {cell['train_seconds']:.0f} s{kept}"
            )
        lines.append(f"| {data_set} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def with_draws(draws: list[dict[str, object]]) -> dict[str, object]:
    """The published split's cell, with every draw's cell and the mean ± sd of accuracy and train time."""
    accuracies = [draw["accuracy"] for draw in draws]
    return {
        **draws[0],
        "mean_accuracy": round(statistics.fmean(accuracies), 4),
        "sd_accuracy": round(statistics.stdev(accuracies), 4),
        "mean_train_seconds": round(statistics.fmean(draw["train_seconds"] for draw in draws), 1),
        "draws": draws,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--config", action="append", default=[], help='extra: NAME="--flag value ..."')
    parser.add_argument("--fastai", action="store_true", help="also run fastai's fine_tune(5) (pip install fastai)")
    parser.add_argument("--resplits", type=int, default=1, help="splits per set: the published one + redraws")
    parser.add_argument("--name", default="suite")
    parser.add_argument("--fastai-run", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fastai_run:
        fastai_script(args.fastai_run, Path(args.work))
        return
    require_shared()
    configs = {name: CONFIGS[name] for name in args.configs.split(",") if name}
    for extra in args.config:
        name, _, flags = extra.partition("=")
        configs[name] = shlex.split(flags)
    order = list(configs) + (["fastai"] if args.fastai else [])
    results: dict[str, dict[str, dict[str, object]]] = {}
    for data_set in args.sets.split(","):
        results[data_set] = {}
        for name, flags in configs.items():
            draws = []
            for draw in range(args.resplits):
                work = Path(tempfile.mkdtemp(prefix=f"tlearn-suite-{data_set}-{name}-"))
                draws.append(run_config(data_set, flags, work, draw))
                shutil.rmtree(work, ignore_errors=True)
            results[data_set][name] = draws[0] if len(draws) == 1 else with_draws(draws)
            print(f"{data_set} {name}: {json.dumps(results[data_set][name])}", flush=True)
        if args.fastai:
            work = Path(tempfile.mkdtemp(prefix=f"tlearn-suite-{data_set}-fastai-"))
            results[data_set]["fastai"] = run_fastai(data_set, work)
            shutil.rmtree(work, ignore_errors=True)
            print(f"{data_set} fastai: {json.dumps(results[data_set]['fastai'])}", flush=True)
    table = markdown(results, order)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(table + "\n")
    print(table)
    save(args.name, {"configs": {name: " ".join(flags) for name, flags in configs.items()}, "results": results})


if __name__ == "__main__":
    main()
