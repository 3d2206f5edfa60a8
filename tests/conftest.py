"""Shared fixtures: an isolated embedding cache, tiny image folders, a browser and a trained, exported model."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import TINY_BACKBONE, make_class_folder, tiny_backbone_weights


def pytest_configure(config: pytest.Config) -> None:
    # One embedding cache for the whole session (backbone weights and embeddings are reused across tests),
    # never the user's own cache.
    cache = Path(config.rootpath) / ".pytest_cache" / "tlearn-cache"
    os.environ["TLEARN_CACHE_DIR"] = str(cache)
    os.environ.pop("TLEARN_EMBEDDING_STORE", None)  # nor a shared store a developer may have set
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for hub retries in tests


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Two well-separated classes, 16 images each (auto split)."""
    return make_class_folder(tmp_path / "data", {"red": 16, "blue": 16})


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's `chromium`) driven by Playwright; skipped where missing, except in CI."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if executable is None or sync_playwright is None:
        missing = "chromium (apt-get install chromium)" if executable is None else "playwright (pip install -e .[dev])"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need {missing}")
        pytest.skip(f"browser tests need {missing}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class ExportedModel:
    data: Path  # red squares and blue circles, the model's training folder
    run: Path  # the run directory (model in run / "model")
    onnx: Path  # its verified fp32 ONNX export
    export: Any  # tlearn.deploy.export.ExportResult of that export


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """A tiny model trained once per session and exported to ONNX (shared by export, inference and serve tests)."""
    import tlearn

    root = tmp_path_factory.mktemp("exported")
    data = make_class_folder(root / "data", {"red": 14, "blue": 14})
    run = tlearn.train(
        data,
        out=root / "run",
        backbone=TINY_BACKBONE,
        weights=tiny_backbone_weights(root),
        quiet=True,
        split=(0.6, 0.2, 0.2),
    )
    result = tlearn.export(run.model_path, root / "model.onnx", check_data=data)
    return ExportedModel(data, run.path, result.path, result)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of 2 CPUs for one test module (skips without `tlearn[ray]`)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
