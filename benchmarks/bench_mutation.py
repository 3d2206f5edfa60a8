"""How many deliberate one-line breaks of the code the tests catch: mutmut over the modules that carry promises.

    python benchmarks/bench_mutation.py [--modules data/discovery.py,training/head.py] [--seconds 900]
                                        [--children 2] [--name mutation]

For each module (path under src/tlearn), mutmut 3 writes every mutant it can make of the module (a flipped
comparison, a changed constant, a dropped argument, ...) and runs the module's own test files (`TESTS` below:
the tests a reviewer would run for that area) against each. A mutant is killed when a test fails, survives when
they all pass, and has no test when none of them runs its code. Writes benchmarks/results/<name>.json with the
counts per module and the score killed / (killed + survived), and <name>-survivors.txt with every survivor
(`mutmut show NAME` in the scratch folder prints its diff). A benchmark, not part of CI: minutes per module.

How it runs mutmut (measured reasons): in a scratch copy of src/, tests/ and pyproject.toml, because mutmut 3
rewrites the sources it mutates; with that copy's `mutants/src` first on PYTHONPATH, because the project's
editable install would otherwise import the unmutated package; twice, because the first run only writes the
mutants and a folder that did not exist when Python started is not searched for imports.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, save

# module (under src/tlearn) → the test files that guard its promises
TESTS = {
    "data/discovery.py": ["tests/data/test_discovery.py", "tests/data/test_label_files.py"],
    "data/checks.py": ["tests/data/test_checks.py", "tests/data/test_label_files.py"],
    "data/label_files.py": ["tests/data/test_label_files.py"],
    "data/images.py": ["tests/data/test_images.py", "tests/hostile/test_images_hostile.py"],
    "backbones/cache.py": ["tests/backbones/test_cache.py", "tests/backbones/test_file_index.py"],
    "training/head.py": ["tests/training/test_head.py"],
    "training/selection.py": ["tests/training/test_selection.py"],
    "training/backbone_choice.py": ["tests/training/test_backbone_choice.py"],
    "evaluation/tasks.py": ["tests/training/test_head.py", "tests/training/test_selection.py", "tests/evaluation"],
    "runs/lifecycle.py": ["tests/runs/test_lifecycle.py"],
    "deploy/guards.py": ["tests/hostile/test_service.py", "tests/deploy/test_serving.py"],
    "deploy/batching.py": ["tests/deploy/test_batching.py"],
    "engines/answers.py": ["tests/engines/test_answers.py"],
}
FAST = ["data/discovery.py", "data/checks.py", "training/head.py", "training/selection.py", "evaluation/tasks.py"]
STATUSES = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "not checked")


def run_module(module: str, work: Path, seconds: float, children: int) -> tuple[dict[str, object], list[str]]:
    """Mutate one module and run its tests against every mutant; (counts, survivor names)."""
    scratch = work / module.replace("/", "_")
    scratch.mkdir(parents=True)
    for item in ("src", "tests", "pyproject.toml"):
        source = ROOT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, scratch / item)
    selection = ", ".join(f'"{path}"' for path in TESTS[module])
    with (scratch / "pyproject.toml").open("a") as config:
        config.write(
            "\n[tool.mutmut]\n"
            f'source_paths = ["src/tlearn/{module}"]\n'
            'also_copy = ["src", "tests"]\n'
            f"pytest_add_cli_args_test_selection = [{selection}]\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        )
    env = {**os.environ, "PYTHONPATH": str(scratch / "mutants" / "src")}
    started = time.perf_counter()
    timed_out = False
    for _ in range(2):  # the first run writes the mutants (see the module docstring), the second tests them
        try:
            subprocess.run(
                ["mutmut", "run", "--max-children", str(children)],
                cwd=scratch,
                env=env,
                capture_output=True,
                timeout=seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:  # what was tested so far is kept; the rest reads "not checked"
            timed_out = True
            subprocess.run(["pkill", "-f", "mutmut: "], check=False)
    listing = subprocess.run(
        ["mutmut", "results", "--all", "true"], cwd=scratch, env=env, capture_output=True, text=True, check=False
    ).stdout
    results = dict(re.findall(r"^\s*(\S+): (.+)$", listing, flags=re.MULTILINE))
    counts = {status: sum(value == status for value in results.values()) for status in STATUSES}
    tested = counts["killed"] + counts["survived"]
    summary = {
        **counts,
        "mutants": len(results),
        "score": round(counts["killed"] / tested, 3) if tested else None,
        "seconds": round(time.perf_counter() - started, 1),
        "timed_out": timed_out,
        "tests": TESTS[module],
    }
    return summary, sorted(name for name, value in results.items() if value == "survived")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(FAST), help=f"under src/tlearn; known: {', '.join(TESTS)}")
    parser.add_argument("--seconds", type=float, default=1200, help="time limit of one module's mutmut run")
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--name", default="mutation")
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        raise SystemExit("this benchmark needs mutmut 3: pip install mutmut")
    work = Path(tempfile.mkdtemp(prefix="tlearn-mutation-"))
    results, survivors = {}, []
    for module in [name for name in args.modules.split(",") if name]:
        results[module], survived = run_module(module, work, args.seconds, args.children)
        survivors += [f"{module}\t{name}" for name in survived]
        print(f"{module}: {results[module]}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}-survivors.txt").write_text("\n".join(survivors) + "\n")
    save(args.name, {"tool": "mutmut 3", "scratch": str(work), "modules": results})


if __name__ == "__main__":
    main()
