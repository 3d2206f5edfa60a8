"""How many deliberate one-line breaks of the code the tests catch: mutmut over the modules that carry promises.

    python benchmarks/bench_mutation.py [--modules data/discovery.py,training/head.py] [--seconds 900]
                                        [--children 2] [--name mutation] [--resume /tmp/tlearn-mutation-XXXX]

For each module (path under src/tlearn), mutmut 3 writes every mutant it can make of the module (a flipped
comparison, a changed constant, a dropped argument, ...) and runs the module's own test files (`TESTS` below:
the tests a reviewer would run for that area) against each. A mutant is killed when a test fails, survives when
they all pass, and has no test when none of them runs its code. Writes benchmarks/results/<name>.json with the
counts per module and the score killed / (killed + survived), and <name>-survivors.txt with every survivor
(`mutmut show NAME`, run in the module's folder of the scratch copy, e.g. SCRATCH/data_checks.py, prints
its diff). A benchmark, not part of CI: minutes per module.

How it runs mutmut (measured reasons): in a scratch copy of src/, tests/ and pyproject.toml, because mutmut 3
rewrites the sources it mutates; with that copy's `mutants/src` first on PYTHONPATH, because the project's
editable install would otherwise import the unmutated package; twice, because the first run only writes the
mutants and a folder that did not exist when Python started is not searched for imports.

`--resume` goes on in an earlier run's scratch folder (the "scratch" of its JSON) instead of starting over: it
first copies the current tests/ in and writes the mutmut settings again (so test files added to `TESTS` run),
runs again the mutants that survived or timed out, then the ones not yet checked. Killed mutants keep their
verdict, which holds as long as src/ is unchanged and tests were only added (a test that was removed or
weakened needs a fresh run). On a busy machine, where one module takes an hour,
that makes "add tests, measure again" minutes instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, save

# module (under src/tlearn) → the test files that guard its promises
TESTS = {
    "data/discovery.py": [
        "tests/data/test_discovery.py",
        "tests/data/test_label_files.py",
        "tests/hostile/test_links.py",
    ],
    "data/checks.py": ["tests/data/test_checks.py", "tests/data/test_label_files.py"],
    "data/label_files.py": ["tests/data/test_label_files.py"],
    "data/images.py": ["tests/data/test_images.py", "tests/hostile/test_images_hostile.py"],
    "backbones/cache.py": ["tests/backbones/test_cache.py", "tests/backbones/test_file_index.py"],
    "training/head.py": ["tests/training/test_head.py"],
    "training/selection.py": ["tests/training/test_selection.py"],
    "training/backbone_choice.py": ["tests/training/test_backbone_choice.py"],
    "evaluation/tasks.py": ["tests/training/test_head.py", "tests/training/test_selection.py", "tests/evaluation"],
    "runs/lifecycle.py": ["tests/runs/test_lifecycle.py", "tests/hostile/test_run_folder_lifecycle.py"],
    "deploy/guards.py": ["tests/hostile/test_service.py", "tests/deploy/test_serving.py"],
    "deploy/batching.py": ["tests/deploy/test_batching.py"],
    "engines/answers.py": ["tests/engines/test_answers.py"],
    "util/hardware.py": ["tests/util/test_hardware.py"],
    "report/compare.py": ["tests/report/test_compare.py"],
    "backbones/result_cache.py": ["tests/backbones/test_result_cache.py"],
    "audits/neighbours.py": ["tests/audits/test_similarity.py"],
    "deploy/pixels.py": ["tests/deploy/test_pixels.py"],
    "deploy/admission.py": ["tests/deploy/test_admission.py"],
}
# Seconds of fixture setup a module's tests need besides their own run: mutmut times each test's call only, so
# a mutant whose tests first train and export the session's model (the `exported_model` fixture: about 30 s on
# a busy 2-core machine) timed out before any test ran. Added to mutmut's per-mutant timeout constant (1 s).
FIXTURE_SECONDS = {"engines/answers.py": 60.0, "deploy/guards.py": 60.0}
# Memory (RLIMIT_DATA) for mutmut and every process it forks: deploy/batching.py's `_drain` mutant that never
# takes from the queue appended to a list until the kernel's OOM killer stopped it at 10 GB, on a machine shared
# with others; under the limit it ends in a MemoryError and fails its test. The tests themselves need far less.
MEMORY_LIMIT_BYTES = 6 * 1024**3
FAST = ["data/discovery.py", "data/checks.py", "training/head.py", "training/selection.py", "evaluation/tasks.py"]
STATUSES = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "not checked")


def run_module(
    module: str, work: Path, seconds: float, children: int, *, resume: bool = False
) -> tuple[dict[str, object], list[str]]:
    """Mutate one module and run its tests against every mutant; (counts, survivor names). With `resume`, go on
    in the module's scratch folder under `work` (see the module docstring)."""
    scratch = work / module.replace("/", "_")
    env = {**os.environ, "PYTHONPATH": str(scratch / "mutants" / "src")}
    if resume:
        shutil.rmtree(scratch / "tests")
        shutil.copytree(ROOT / "tests", scratch / "tests")  # mutmut copies them on into mutants/ itself
        _write_settings(scratch, module)  # the test files run now (a file added to TESTS since is run too)
        again = [name for name, value in _results(scratch, env).items() if value in ("survived", "timeout")]
        passes = [again, []] if again else [[]]  # the mutants named first, then whatever is left unchecked
    else:
        scratch.mkdir(parents=True)
        for item in ("src", "tests"):
            shutil.copytree(ROOT / item, scratch / item)
        _write_settings(scratch, module)
        passes = [[], []]  # the first run writes the mutants (see the module docstring), the second tests them
    started = time.perf_counter()
    timed_out = False
    for names in passes:
        left = seconds - (time.perf_counter() - started)  # one limit for the module, all runs together
        if left <= 0:
            timed_out = True
            break
        # its own process group, so that a timeout ends mutmut's forked workers too, and nobody else's mutmut
        mutmut = subprocess.Popen(
            ["mutmut", "run", "--max-children", str(children), *names],
            cwd=scratch,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_limit_memory,
        )
        try:
            mutmut.wait(timeout=left)
        except subprocess.TimeoutExpired:  # what was tested so far is kept; the rest reads "not checked"
            timed_out = True
        with contextlib.suppress(ProcessLookupError):  # also ends what timed-out mutants' tests left behind
            os.killpg(mutmut.pid, signal.SIGKILL)
        mutmut.wait()
    results = _results(scratch, env)
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


def _write_settings(scratch: Path, module: str) -> None:
    """The scratch copy's pyproject.toml: the project's, with the mutmut settings for `module` appended."""
    selection = ", ".join(f'"{path}"' for path in TESTS[module])
    shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
    with (scratch / "pyproject.toml").open("a") as config:
        config.write(
            "\n[tool.mutmut]\n"
            f'source_paths = ["src/tlearn/{module}"]\n'
            'also_copy = ["src", "tests"]\n'
            f"pytest_add_cli_args_test_selection = [{selection}]\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
            # forked from a process that ran the tests once, a mutant's tests hung wherever they decode images
            # in a process pool (the pool's workers waited on their pipe forever) and read as timeouts: the
            # fork server forks every mutant from a process that only collected the tests
            'process_isolation = "forkserver"\n'
            f"timeout_constant = {FIXTURE_SECONDS.get(module, 1.0)}\n"
        )


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def _results(scratch: Path, env: dict[str, str]) -> dict[str, str]:
    """Each mutant's status so far (killed, survived, not checked, ...) in a module's scratch folder."""
    listing = subprocess.run(
        ["mutmut", "results", "--all", "true"], cwd=scratch, env=env, capture_output=True, text=True, check=False
    ).stdout
    return dict(re.findall(r"^\s*(\S+): (.+)$", listing, flags=re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(FAST), help=f"under src/tlearn; known: {', '.join(TESTS)}")
    parser.add_argument("--seconds", type=float, default=1200, help="time limit of one module's mutmut run")
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--name", default="mutation")
    parser.add_argument("--resume", type=Path, help="an earlier run's scratch folder to go on in (see above)")
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        raise SystemExit("this benchmark needs mutmut 3: pip install mutmut")
    work = args.resume or Path(tempfile.mkdtemp(prefix="tlearn-mutation-"))
    results, survivors = {}, []
    for module in [name for name in args.modules.split(",") if name]:
        resume = args.resume is not None and (work / module.replace("/", "_") / "mutants").is_dir()
        results[module], survived = run_module(module, work, args.seconds, args.children, resume=resume)
        survivors += [f"{module}\t{name}" for name in survived]
        print(f"{module}: {results[module]}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}-survivors.txt").write_text("\n".join(survivors) + "\n")
    save(args.name, {"tool": "mutmut 3", "scratch": str(work), "modules": results})


if __name__ == "__main__":
    main()
