"""The example notebooks run top to bottom on this interpreter's kernel, committed without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient
from traitlets.config import Config

from helpers import POOLS, PROJECT

EXAMPLES = PROJECT / "examples"
CELL_TIMEOUT_S = 600


def execute(name: str, sockets: Path) -> nbformat.NotebookNode:
    """Run examples/<name> top to bottom in a fresh `python3` kernel; raises on the first failing cell.

    The kernel talks over Unix sockets named `sockets`-N: no TCP ports to race for with other processes.
    """
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    started = time.perf_counter()
    sockets_config = Config({"KernelManager": {"transport": "ipc", "ip": str(sockets)}})
    NotebookClient(
        notebook,
        kernel_name="python3",
        config=sockets_config,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(EXAMPLES)}},
    ).execute()
    print(f"{name}: {time.perf_counter() - started:.0f} s")
    return notebook


def outputs(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
    return [
        output["data"][mime]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if mime in output.get("data", {})
    ]


def printed(notebook: nbformat.NotebookNode) -> str:
    """Everything the cells printed (stdout and stderr)."""
    return "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )


@pytest.fixture
def kernel_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `python3` kernel on this interpreter whose temporary folder is pytest's `tmp_path`.

    The kernelspec written here comes first on JUPYTER_PATH, so no other installed `python3` kernel (another
    environment's) can run the notebooks; the kernel inherits TMPDIR, so the notebooks' outputs land in tmp_path.
    """
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")  # argv[0]: sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", ["pools_walkthrough.ipynb", "quickstart.ipynb"])
def test_committed_without_outputs(name):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert notebook.metadata.kernelspec.name == "python3"


def test_quickstart_runs(kernel_tmp):
    before = sorted(EXAMPLES.rglob("*"))
    notebook = execute("quickstart.ipynb", kernel_tmp / "kernel")
    reports = [page for page in outputs(notebook, "text/html") if 'alt="confusion counts"' in page]
    assert len(reports) == 1 and "data:image/png;base64," in reports[0]
    assert printed(notebook).count(" → ") == 3  # three images predicted
    assert sorted(EXAMPLES.rglob("*")) == before  # nothing written into the repository


@pytest.mark.slow
@pytest.mark.skipif(not POOLS.is_dir(), reason=f"the pools notebook needs the shared dataset at {POOLS}")
def test_pools_walkthrough_runs(kernel_tmp):
    before = sorted(EXAMPLES.rglob("*"))
    notebook = execute("pools_walkthrough.ipynb", kernel_tmp / "kernel")
    reports = [page for page in outputs(notebook, "text/html") if 'alt="confusion counts"' in page]
    assert len(reports) == 2  # linear and fine-tuned runs, each with curves and confusion matrix inline
    assert all(page.count("data:image/png;base64,") == 2 for page in reports)
    assert len(outputs(notebook, "image/png")) == 3  # samples, ImageNet's view, before/after
    assert "same answers as PyTorch: True" in printed(notebook)
    assert len(list(kernel_tmp.glob("tlearn-pools-*/pools.onnx"))) == 1  # exported to the temporary folder
    assert sorted(EXAMPLES.rglob("*")) == before
