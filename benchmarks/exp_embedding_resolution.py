"""Experiment: does a linear head on frozen embeddings score higher when the pictures are embedded larger than the
backbone's input size (8/7 of it: Lite0 256, Lite1 272, Lite2 296)?

    python benchmarks/exp_embedding_resolution.py hymenoptera,pools,signs,mri

Per set, every image of the published split is embedded once per (backbone, size) — resized so the short side is
size / 0.875, centre-cropped — and a standardised logistic regression (C by 5-fold cross-validation) is fitted on
the training images of three splits (the published one and bench_suite.py's two redraws) and scored on the
held-out ones. Prints and saves the three test accuracies per (set, backbone, size), their mean and the mean
cross-validated accuracy. A benchmark script of its own (not tlearn's pipeline), to decide whether the embedding
size is worth changing.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _common import SHARED, save
from tlearn.backbones.registry import resolve_backbone
from tlearn.backbones.timm_models import _build_embedded

SETS = {"hymenoptera": "val", "pools": "test", "signs": "test", "mri": "test"}
SIZES = {"lite0": (224, 256), "lite1": (240, 272), "lite2": (260, 296)}  # the input size, then 8/7 of it
CROP = 0.875  # the short side is resized to size / CROP, then the centre is cropped
C_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1]


def centre_crop(path: Path, size: int) -> torch.Tensor:
    """The picture as a (3, size, size) tensor in [0, 1]: short side to size / CROP, centre crop."""
    picture = Image.open(path).convert("RGB")
    short = int(size / CROP)
    width, height = picture.size
    scale = short / min(width, height)
    picture = picture.resize((max(short, round(width * scale)), max(short, round(height * scale))), Image.BICUBIC)
    left, top = (picture.size[0] - size) // 2, (picture.size[1] - size) // 2
    picture = picture.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255


def embed(model: torch.nn.Module, files: list[Path], size: int) -> np.ndarray:
    """(N, D) pre-logit embeddings, the embedded backbones' normalisation ((x - 0.5) / 0.5)."""
    batches = []
    for start in range(0, len(files), 32):
        pixels = (torch.stack([centre_crop(path, size) for path in files[start : start + 32]]) - 0.5) / 0.5
        with torch.no_grad():
            batches.append(model.forward_head(model.forward_features(pixels), pre_logits=True).numpy())
    return np.concatenate(batches)


def splits(data_set: str) -> tuple[list[Path], np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Every image of the set, its class, and the (train, held-out) rows of the three splits bench_suite.py uses."""
    train, held_out = SHARED / data_set / "train", SHARED / data_set / SETS[data_set]
    classes = sorted(path.name for path in train.iterdir() if path.is_dir())
    listed = {
        name: [sorted(p for p in (root / name).rglob("*") if p.is_file()) for root in (train, held_out)]
        for name in classes
    }
    files = [path for name in classes for group in listed[name] for path in group]
    labels = np.array([index for index, name in enumerate(classes) for group in listed[name] for _ in group])
    row = {path: position for position, path in enumerate(files)}
    draws = []
    for draw in range(3):
        rng = np.random.default_rng(draw)
        train_rows, held_rows = [], []
        for name in classes:
            kept, shown = listed[name]
            if draw == 0:
                train_rows += [row[path] for path in kept]
                held_rows += [row[path] for path in shown]
                continue
            pooled = [kept[index] for index in rng.permutation(len(kept))] + shown
            for rank, index in enumerate(rng.permutation(len(pooled))):
                (train_rows if rank < len(kept) else held_rows).append(row[pooled[index]])
        draws.append((np.array(train_rows), np.array(held_rows)))
    return files, labels, draws


def main() -> None:
    torch.set_num_threads(2)
    results: dict[str, dict[str, object]] = {}
    for data_set in sys.argv[1].split(","):
        files, labels, draws = splits(data_set)
        for name, sizes in SIZES.items():
            model = _build_embedded(resolve_backbone(name)).eval()
            for size in sizes:
                started = time.time()
                embeddings = embed(model, files, size)
                tests, cvs = [], []
                for train_rows, held_rows in draws:
                    folds = min(5, int(np.bincount(labels[train_rows]).min()))
                    search = GridSearchCV(
                        make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                        {"logisticregression__C": C_GRID},
                        cv=StratifiedKFold(folds, shuffle=True, random_state=0),
                    ).fit(embeddings[train_rows], labels[train_rows])
                    tests.append(float((search.predict(embeddings[held_rows]) == labels[held_rows]).mean()))
                    cvs.append(float(search.best_score_))
                cell = {"test": tests, "cv": cvs, "mean": float(np.mean(tests)), "seconds": time.time() - started}
                results[f"{data_set}/{name}/{size}"] = cell
                print(data_set, name, size, [round(100 * value, 1) for value in tests], round(100 * cell["mean"], 2))
                save("exp-embedding-resolution", {"sizes": SIZES, "results": results})


if __name__ == "__main__":
    main()
