"""The embedding step on a Ray cluster (`tlearn train --ray`): the vectors, content hashes and refusals of the
local path, cached where the local path caches them; the local path until the backbone's graph exists."""

from __future__ import annotations

import numpy as np

from helpers import colour_image, write_broken_files
from tlearn.backbones import ray_embedding
from tlearn.backbones.features import FeatureExtractor
from tlearn.util.progress import Progress


def _images(root, count, start=0):
    root.mkdir(parents=True, exist_ok=True)
    for n in range(start, start + count):
        colour_image(((n * 53) % 255, 120, 40), size=48 + n, seed=n).save(root / f"img_{n:03d}.png")
    return sorted(root.iterdir())


def _record_cluster_outcomes(monkeypatch) -> list:
    """The outcomes `embed_on_ray` hands back, in a list filled as they arrive."""
    arrived = []
    cluster = ray_embedding.embed_on_ray
    monkeypatch.setattr(
        ray_embedding,
        "embed_on_ray",
        lambda *args, **kwargs: (arrived.append(o) or o for o in cluster(*args, **kwargs)),
    )
    return arrived


def _embed(ref, cache, paths, ray=None, messages=None, engine="onnx"):
    progress = Progress(quiet=True)
    if messages is not None:
        progress.info = messages.append
    extractor = FeatureExtractor(ref, cache, device="cpu", workers=0, engine=engine, batch_size=4, ray=ray)
    return extractor.embed_files(paths, progress=progress)


def test_ray_embeds_what_the_local_path_embeds_and_caches_it(tiny_ref, tmp_path, local_ray, monkeypatch):
    paths = _images(tmp_path / "data", 10)
    reasons = write_broken_files(tmp_path / "data" / "bad")
    paths += sorted((tmp_path / "data" / "bad").iterdir())
    paths.append(paths[0])  # the same file twice: computed once, as locally
    _images(tmp_path / "prepare", 12, start=100)  # the backbone's graph, exported and checked by a first local run
    _embed(tiny_ref, tmp_path / "cache-ray", sorted((tmp_path / "prepare").iterdir()))
    _embed(tiny_ref, tmp_path / "cache-local", sorted((tmp_path / "prepare").iterdir()))

    local = _embed(tiny_ref, tmp_path / "cache-local", paths)
    messages: list[str] = []
    arrived = _record_cluster_outcomes(monkeypatch)
    on_ray = _embed(tiny_ref, tmp_path / "cache-ray", paths, ray="auto", messages=messages)
    assert sum(len(o.batch.positions) + len(o.batch.failures) for o in arrived) == len(paths)  # all on the cluster
    assert not any("not on Ray" in message for message in messages)
    # Every file read on the cluster (the repeated one too: its content was unknown until read there).
    assert on_ray.files_read == len(paths) and on_ray.cache_hits == 0 and on_ray.engine == "onnx"
    assert on_ray.content_hashes == local.content_hashes
    assert on_ray.failures == local.failures and len(on_ray.failures) == len(reasons)
    np.testing.assert_allclose(on_ray.embeddings, local.embeddings, rtol=0, atol=1e-6)
    again = _embed(tiny_ref, tmp_path / "cache-ray", paths)  # the driver cached every vector and verdict
    assert again.computed == 0 and again.cache_hits == 10 and again.failures == local.failures


def test_without_the_graph_the_first_batch_exports_it_here_and_the_rest_goes_to_ray(
    tiny_ref, tmp_path, local_ray, monkeypatch
):
    paths = _images(tmp_path / "data", 11)
    messages: list[str] = []
    arrived = _record_cluster_outcomes(monkeypatch)
    result = _embed(tiny_ref, tmp_path / "cache", paths, ray="auto", messages=messages, engine="auto")
    assert result.computed == 11 and result.onnx_exported
    assert any("ONNX graph here first" in message for message in messages)
    assert sum(len(o.batch.positions) for o in arrived) == 11 - 4  # all but the first batch (4) on the cluster
    local = _embed(tiny_ref, tmp_path / "cache-local", paths)
    np.testing.assert_allclose(result.embeddings, local.embeddings, rtol=0, atol=1e-6)
