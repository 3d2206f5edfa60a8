"""Decoding workers end with the process that started them, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

PARENT = textwrap.dedent(
    """
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from tlearn.util.orphans import die_with_parent

    initializer = die_with_parent if sys.argv[1] == "guarded" else None
    pool = ProcessPoolExecutor(2, initializer=initializer, initargs=(os.getpid(),) if initializer else ())
    for started in [pool.submit(os.getpid) for _ in range(8)]:  # both workers started
        started.result()
    print(" ".join(map(str, pool._processes)), flush=True)
    pool.submit(time.sleep, 60)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("guard", ["guarded", "unguarded"])
def test_workers_end_when_their_parent_is_killed(guard):
    """With the pools' initializer the workers of a SIGKILLed parent end within seconds; without it (the
    control case) they live on, which is what the initializer is for."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, guard], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert workers and all(_alive(pid) for pid in workers)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # the unguarded workers: the test must not leave them behind
        os.kill(pid, 9)
    assert (survivors == []) == (guard == "guarded"), survivors


def test_the_decoding_pool_asks_for_it(tmp_path):
    """Every image-decoding pool (embedding, prediction, evaluation) starts its workers with the guard."""
    from helpers import colour_image
    from tlearn.backbones.registry import EMBEDDED
    from tlearn.data.decoding import BatchDecoder
    from tlearn.util.orphans import die_with_parent

    path = tmp_path / "red.png"
    colour_image((200, 30, 30), size=40).save(path)
    with BatchDecoder([path, path], EMBEDDED["tf_efficientnet_lite0"].preprocessing, workers=1) as batches:
        assert batches._pool._initializer is die_with_parent and batches._pool._initargs == (os.getpid(),)
        assert sum(len(batch.positions) for batch in batches) == 2
