"""The backbone on onnxruntime: exported once, checked against PyTorch before its first use, cached, shared
cache entries with PyTorch, and a run with the graph cached never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
from onnx import numpy_helper

from helpers import PROJECT, TINY_BACKBONE, colour_image
from tlearn.backbones import onnx_export
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.onnx_models import MAX_RELATIVE_DIFFERENCE, GraphFiles, OnnxBackbone
from tlearn.backbones.registry import StoredBackbone
from tlearn.data.preprocess import normalize
from tlearn.util.progress import Progress


def _folder(root, count, start=0):
    root.mkdir(parents=True, exist_ok=True)
    for n in range(start, start + count):
        colour_image(((n * 53) % 255, 120, 40), size=48, seed=n).save(root / f"img_{n:03d}.png")
    return sorted(root.iterdir())


def _extractor(ref, cache, engine):
    return FeatureExtractor(ref, cache, device="cpu", workers=0, engine=engine, batch_size=8)


def _embed(ref, cache, engine, paths, progress=None):
    return _extractor(ref, cache, engine).embed_files(paths, progress=progress or Progress(quiet=True))


def test_export_is_checked_cached_and_agrees_with_torch(tiny_ref, tmp_path):
    paths = _folder(tmp_path / "data", 12)
    torch_run = _extractor(tiny_ref, tmp_path / "torch-cache", "torch").embed_files(
        paths, progress=Progress(quiet=True)
    )
    onnx_run = _embed(tiny_ref, tmp_path / "cache", "onnx", paths)
    assert onnx_run.onnx_exported and onnx_run.engine == "onnx" and torch_run.engine == "torch"
    difference = np.abs(onnx_run.embeddings - torch_run.embeddings).max() / np.abs(torch_run.embeddings).max()
    assert difference <= MAX_RELATIVE_DIFFERENCE
    info = StoredBackbone(tmp_path / "cache", tiny_ref.key).info()
    files = GraphFiles.of(tmp_path / "cache", tiny_ref.key, info)
    record = json.loads(files.record.read_text())
    assert record["passed"] and record["max_relative_difference"] <= MAX_RELATIVE_DIFFERENCE and record["images"] == 8
    assert OnnxBackbone.load(files, info) is not None
    # Both engines file their embeddings under the same keys: the onnx cache serves a torch run.
    shared = _embed(tiny_ref, tmp_path / "cache", "torch", paths)
    assert shared.cache_hits == 12 and shared.computed == 0


COLD_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tlearn.backbones.features import FeatureExtractor
    from tlearn.backbones.registry import resolve_backbone
    from tlearn.util.progress import Progress
    ref = resolve_backbone(sys.argv[1], sys.argv[2])
    paths = sorted(Path(sys.argv[4]).iterdir())
    result = FeatureExtractor(ref, Path(sys.argv[3]), device="auto", workers=1).embed_files(
        paths, progress=Progress(quiet=True)
    )
    leaked = sorted(name for name in ("torch", "timm", "torchvision") if name in sys.modules)
    print(result.engine, result.computed, result.cache_hits, len(result.failures), ",".join(leaked) or "-")
    """
)


def test_a_cold_run_with_the_graph_cached_never_imports_torch(tiny_ref, tmp_path):
    _extractor(tiny_ref, tmp_path / "cache", "onnx").embed_files(
        _folder(tmp_path / "first", 9), progress=Progress(quiet=True)
    )
    new_images = tmp_path / "new"
    _folder(new_images, 10, start=100)
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            COLD_RUN,
            TINY_BACKBONE,
            str(tiny_ref.weights_path),
            str(tmp_path / "cache"),
            str(new_images),
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["onnx", "10", "0", "0", "-"]


def _perturbed_export(backbone):
    payload, exporter = REAL_EXPORT(backbone)
    model = onnx.load_from_string(payload)
    weight = next(init for init in model.graph.initializer if numpy_helper.to_array(init).ndim == 4)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    return model.SerializeToString(), exporter


REAL_EXPORT = onnx_export.export_embedding_graph


def test_a_graph_that_disagrees_with_torch_is_never_used_nor_retried(tiny_ref, tmp_path, monkeypatch):
    paths = _folder(tmp_path / "data", 10)
    monkeypatch.setattr(onnx_export, "export_embedding_graph", _perturbed_export)
    lines = []
    progress = Progress(quiet=True)
    progress.info = lines.append
    result = _embed(tiny_ref, tmp_path / "cache", "onnx", paths, progress)
    assert result.engine == "torch" and not result.onnx_exported
    assert any("onnxruntime not used" in line and "differ from PyTorch" in line for line in lines)
    info = StoredBackbone(tmp_path / "cache", tiny_ref.key).info()
    files = GraphFiles.of(tmp_path / "cache", tiny_ref.key, info)
    assert not files.model.exists() and "differ" in files.failure()
    reference = _embed(tiny_ref, tmp_path / "ref", "torch", paths)
    np.testing.assert_allclose(
        result.embeddings, reference.embeddings, rtol=1e-5, atol=1e-6
    )  # torch's, not the bad graph's
    # "auto" with many images to compute does not export again a graph that failed with this onnxruntime.
    monkeypatch.setattr("tlearn.backbones.features.EXPORT_MIN_IMAGES", 1)
    exported = []
    monkeypatch.setattr(
        onnx_export, "export_embedding_graph", lambda backbone: exported.append(1) or REAL_EXPORT(backbone)
    )
    more = _folder(tmp_path / "more", 5, start=50)
    again = _embed(tiny_ref, tmp_path / "cache", "auto", more)
    assert again.engine == "torch" and exported == []


def test_a_damaged_graph_file_is_not_loaded(tiny_ref, tmp_path):
    _extractor(tiny_ref, tmp_path / "cache", "onnx").embed_files(
        _folder(tmp_path / "data", 9), progress=Progress(quiet=True)
    )
    info = StoredBackbone(tmp_path / "cache", tiny_ref.key).info()
    files = GraphFiles.of(tmp_path / "cache", tiny_ref.key, info)
    data = bytearray(files.model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    files.model.write_bytes(bytes(data))
    assert OnnxBackbone.load(files, info) is None
    more = _folder(tmp_path / "more", 3, start=40)
    again = _embed(tiny_ref, tmp_path / "cache", "auto", more)
    assert again.engine == "torch"  # few images: no new export, and never the damaged graph


TRAIN_RUN = textwrap.dedent(
    """
    import sys
    from tlearn.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as stop:
        assert not stop.code, stop.code
    print(",".join(sorted(name for name in ("torch", "timm", "torchvision") if name in sys.modules)) or "-")
    """
)


def test_tlearn_train_linear_on_new_images_never_imports_torch(tiny_ref, tmp_path):
    """The whole cold `tlearn train --mode linear` (report included), once the backbone's graph is cached."""
    _embed(tiny_ref, tmp_path / "cache", "onnx", _folder(tmp_path / "first", 9))
    data = tmp_path / "data"
    for label, start in (("red", 200), ("blue", 300)):
        _folder(data / label, 12, start=start)
    arguments = ["train", data, "--out", tmp_path / "run", "--mode", "linear", "-q"]
    arguments += ["--backbone", TINY_BACKBONE, "--weights", tiny_ref.weights_path]
    completed = subprocess.run(
        [sys.executable, "-c", TRAIN_RUN, *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        env={**os.environ, "TLEARN_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "-"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["embedding"]["computed"] == 24


def test_models_the_new_exporter_cannot_handle_fall_back_to_torchscript(tiny_ref, tmp_path, monkeypatch):
    import torch

    real_export = torch.onnx.export

    def no_dynamo(*args, dynamo=False, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported operator")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    result = _embed(tiny_ref, tmp_path / "cache", "onnx", _folder(tmp_path / "data", 9))
    assert result.onnx_exported and result.engine == "onnx"
    info = StoredBackbone(tmp_path / "cache", tiny_ref.key).info()
    assert (
        json.loads(GraphFiles.of(tmp_path / "cache", tiny_ref.key, info).record.read_text())["exporter"]
        == "torchscript"
    )


def test_the_caller_decodes_before_its_model_is_loaded_only_when_that_is_a_stored_graph(
    tiny_ref, tmp_path, monkeypatch
):
    """A stored graph loads in a fraction of a second; importing torch takes seconds, during which the workers
    decode alone and decoding in the caller would only delay the import."""
    from tlearn.data.decoding import BatchDecoder

    helped = []
    real_init = BatchDecoder.__init__

    def noting(self, *args, **kwargs):
        helped.append(kwargs["caller_decodes"])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(BatchDecoder, "__init__", noting)
    cache = tmp_path / "cache"
    _embed(tiny_ref, cache, "onnx", _folder(tmp_path / "first", 4))  # exports the graph after its first batch
    _embed(tiny_ref, cache, "onnx", _folder(tmp_path / "second", 4, start=10))
    _embed(tiny_ref, cache, "torch", _folder(tmp_path / "third", 4, start=20))
    assert helped == [False, True, False]


def test_a_batch_runs_a_few_images_at_a_time_and_its_answers_join_in_order(tiny_ref, tmp_path):
    """onnxruntime keeps the memory of its largest run: a batch is run `SESSION_ROWS` images at a time (the
    remainder too), with the embeddings of one run of the whole batch, rows in order."""
    from tlearn.backbones.onnx_models import SESSION_ROWS

    _embed(tiny_ref, tmp_path / "cache", "onnx", _folder(tmp_path / "data", 4))
    info = StoredBackbone(tmp_path / "cache", tiny_ref.key).info()
    backbone = OnnxBackbone.load(GraphFiles.of(tmp_path / "cache", tiny_ref.key, info), info)
    session, runs = backbone.session, []

    class Recording:
        def run(self, outputs, feed):
            runs.append(len(next(iter(feed.values()))))
            return session.run(outputs, feed)

    size = info.preprocessing.input_size[-1]
    pixels = np.random.default_rng(0).integers(0, 255, (4 * SESSION_ROWS + 3, size, size, 3), dtype=np.uint8)
    whole = session.run(["embedding"], {"pixels": normalize(pixels, info.preprocessing)})[0]
    backbone.session = Recording()
    sliced = backbone.embed(pixels)
    assert runs == [SESSION_ROWS] * 4 + [3]
    np.testing.assert_allclose(sliced, whole, rtol=1e-5, atol=1e-6)
    assert not np.allclose(sliced[1:], sliced[:-1])  # distinct rows: a mix-up of their order would show
