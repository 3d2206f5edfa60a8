"""The package's shape: no import cycles (deferred imports included), data flowing one way between folders,
torch-free folders that stay torch-free, a thin CLI and short parameter lists."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PROJECT

PACKAGE = PROJECT / "src" / "tlearn"

# The order data flows in: a module may import from its own layer or a lower one, never from a higher one.
LAYERS = [
    {"tlearn", "tlearn.errors", "tlearn.util"},
    {"tlearn.data"},
    {"tlearn.evaluation"},  # metrics, intervals and the tasks (single- or multi-label): NumPy and scikit-learn
    {"tlearn.backbones"},
    {"tlearn.runs"},
    {"tlearn.config"},
    {"tlearn.engines"},
    {"tlearn.evaluation.folder"},  # evaluating a loaded model on a folder: above the engines it runs
    {"tlearn.training"},
    {"tlearn.report"},
    {"tlearn.audits"},
    {"tlearn.pipeline"},
    {"tlearn.deploy"},
    {"tlearn.api"},
    {"tlearn.cli", "tlearn.__main__"},
]
TORCH_FREE = ["tlearn.data", "tlearn.runs", "tlearn.evaluation", "tlearn.report", "tlearn.audits"]
TORCH_FREE_MODULES = ["tlearn.engines.onnx_engine", "tlearn.engines.loading", "tlearn.api", "tlearn.cli"]
MAX_PARAMETERS = 8
MAX_CLI_MODULE_LINES = 150
# Training, deployment and the front door grow fastest; beyond this a module has more than one reason to change.
MAX_MODULE_LINES = {"tlearn.training": 450, "tlearn.deploy": 450, "tlearn.api": 450, "tlearn.pipeline": 450}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """tlearn modules `path` imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("tlearn"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlearn"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    """The layer of the most specific LAYERS entry that holds `module` ("tlearn" itself is only the package)."""
    matches = [
        (len(member), index)
        for index, members in enumerate(LAYERS)
        for member in members
        if module == member or (member != "tlearn" and module.startswith(member + "."))
    ]
    assert matches, f"{module} belongs to no layer; add its folder to LAYERS"
    return max(matches)[1]


def test_the_import_graph_has_no_cycle():
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_graph_sees_deferred_imports():
    # The graph must include imports made inside functions, or the no-cycle test would guard little.
    assert "tlearn.training.finetune" in GRAPH["tlearn.training.candidates"]
    assert "tlearn.engines.torch_engine" in GRAPH["tlearn.engines.loading"]


def test_data_flows_one_way_between_folders():
    upward = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports against the flow: " + "; ".join(sorted(upward))


@pytest.mark.parametrize("prefix", TORCH_FREE + TORCH_FREE_MODULES)
def test_torch_free_folders_never_import_torch(prefix):
    modules = [name for name in MODULES if name == prefix or name.startswith(prefix + ".")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(name for name in ('torch', 'timm', 'torchvision') if name in sys.modules)\n"
        "assert not leaked, f'imported {leaked}'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_cli_modules_stay_thin():
    for name, path in MODULES.items():
        if name.startswith("tlearn.cli"):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines <= MAX_CLI_MODULE_LINES, f"{path} has {lines} lines"


def test_modules_that_grow_fastest_stay_short():
    long = [
        f"{path} ({lines} lines, at most {limit})"
        for name, path in MODULES.items()
        for prefix, limit in MAX_MODULE_LINES.items()
        if (name == prefix or name.startswith(prefix + "."))
        and (lines := len(path.read_text(encoding="utf-8").splitlines())) > limit
    ]
    assert not long, "split these modules: " + "; ".join(long)


def test_no_function_takes_more_than_eight_parameters():
    """Beyond eight, parameters belong in a typed config object. CLI commands declare options and are exempt."""
    long = []
    for name, path in MODULES.items():
        if name.startswith("tlearn.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                count = len([argument for argument in arguments if argument.arg not in ("self", "cls")])
                if count > MAX_PARAMETERS:
                    long.append(f"{name}.{node.name} ({count})")
    assert not long, "functions with more than eight parameters: " + ", ".join(long)
