"""The audit's similarity searches at scale: near-duplicate pairs and nearest neighbours, exact and indexed.

    python benchmarks/bench_neighbours.py [--sizes 20000,100000] [--dims 1280] [--copies 1000] [--name neighbours]

Synthetic embeddings (the shared sets hold a few hundred images): `--dims`-d vectors around 200 random
centres, with `--copies` altered copies of earlier rows appended (noise growing so that their cosine with the
original, after the audit's standardisation, spans about 0.83-0.96). For each size: seconds to find every pair
above the audit's near-duplicate similarity (0.80) and the 10 nearest neighbours of every row, with the index
(faiss IVF, `tlearn.audits.neighbours.IndexedSearch`, index build included) and, up to `--exact-limit` rows,
exactly (`ExactSearch`); the share of planted copies found; at sizes measured both ways, the share of exact pairs
the index found and how close its neighbour distances are. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import save
from tlearn.audits.duplicates import DUPLICATE_SIMILARITY
from tlearn.audits.neighbours import ExactSearch, IndexedSearch
from tlearn.audits.outliers import NEIGHBOURS
from tlearn.audits.vectors import standardised_unit


def planted(count: int, dims: int, copies: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, dims)).astype(np.float32)
    embeddings = centres[rng.integers(0, 200, count)] + rng.normal(size=(count, dims)).astype(np.float32)
    originals = rng.choice(count - copies, copies, replace=False)
    noise = np.linspace(0.3, 0.75, copies, dtype=np.float32)[:, None]
    embeddings[count - copies :] = embeddings[originals] + noise * rng.normal(size=(copies, dims)).astype(np.float32)
    pairs = {(int(original), count - copies + k) for k, original in enumerate(originals)}
    return embeddings, pairs


def timed(search_type: type, unit: np.ndarray) -> dict[str, object]:
    started = time.perf_counter()
    search = search_type(unit)
    built = time.perf_counter()
    pairs = search.pairs(DUPLICATE_SIMILARITY)
    paired = time.perf_counter()
    distances = search.mean_neighbour_distances(NEIGHBOURS)
    done = time.perf_counter()
    return {
        "method": search.method,
        "build_s": round(built - started, 2),
        "pairs_s": round(paired - built, 2),
        "near_duplicates_s": round(paired - started, 2),
        "neighbours_s": round(done - paired, 2),
        "pairs": pairs,
        "distances": distances,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--copies", type=int, default=1000)
    parser.add_argument("--exact-limit", type=int, default=20000)
    parser.add_argument("--name", default="neighbours")
    args = parser.parse_args()
    results = {}
    for size in [int(value) for value in args.sizes.split(",")]:
        embeddings, planted_pairs = planted(size, args.dims, args.copies)
        unit = standardised_unit(embeddings)
        similarities = [float(unit[i] @ unit[j]) for i, j in planted_pairs]
        row: dict[str, object] = {
            "planted_copies": len(planted_pairs),
            "planted_similarity_range": [round(min(similarities), 3), round(max(similarities), 3)],
        }
        runs = {"indexed": timed(IndexedSearch, unit)}
        if size <= args.exact_limit:
            runs["exact"] = timed(ExactSearch, unit)
        for name, run in runs.items():
            found = {(i, j) for i, j, _ in run["pairs"]}
            row[name] = {
                **{key: value for key, value in run.items() if key not in ("pairs", "distances")},
                "pairs_found": len(found),
                "planted_found": round(len(planted_pairs & found) / len(planted_pairs), 4),
            }
        if "exact" in runs:
            exact_pairs = {(i, j) for i, j, _ in runs["exact"]["pairs"]}
            indexed_pairs = {(i, j) for i, j, _ in runs["indexed"]["pairs"]}
            gap = runs["indexed"]["distances"] - runs["exact"]["distances"]
            row["indexed_vs_exact"] = {
                "pair_recall": round(len(exact_pairs & indexed_pairs) / max(len(exact_pairs), 1), 4),
                "neighbour_distance_equal_share": round(float(np.mean(np.abs(gap) < 1e-5)), 4),
                "neighbour_distance_max_gap": round(float(gap.max()), 5),
            }
        results[str(size)] = row
        print(size, row, flush=True)
    save(args.name, {"dims": args.dims, "sizes": results})


if __name__ == "__main__":
    main()
