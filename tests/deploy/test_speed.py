"""A model's speed on this machine (`tlearn compare --speed`): throughput in batches, one picture's latency."""

from __future__ import annotations

import base64
import re
import time
from types import SimpleNamespace

import tlearn
from helpers import run_cli
from tlearn.deploy.speed import BATCH_SIZE, LATENCY_CALLS, time_engine


class SlowEngine:
    """Answers after 6 ms plus 1 ms per picture: 6 ms alone, 38 ms for a batch of 32 (842 pictures/s)."""

    def __init__(self) -> None:
        self.preprocessing = SimpleNamespace(input_size=(8, 6))
        self.batches: list[tuple[int, ...]] = []

    def probabilities(self, pixels):
        self.batches.append(pixels.shape)
        time.sleep(0.006 + 0.001 * len(pixels))
        return pixels[:, 0, 0, :2].astype(float)


def test_throughput_is_pictures_per_second_in_batches_and_latency_one_picture_alone():
    engine = SlowEngine()
    speed = time_engine(engine, seconds=0.3)
    assert speed.batch_size == BATCH_SIZE == 32
    assert 600 <= speed.images_per_second <= 32 / 0.038  # sleep never returns early; a busy machine is slower
    assert 6.0 <= speed.latency_ms < 20.0  # one picture, not a batch (38 ms)
    shapes = set(engine.batches)
    assert shapes == {(32, 8, 6, 3), (1, 8, 6, 3)}  # random pixels at the model's own input size
    assert sum(shape[0] == 1 for shape in engine.batches) == LATENCY_CALLS + 1  # one warm-up call


def test_compare_with_speed_times_each_model_on_onnxruntime(capsys, tiny_data, tmp_path):
    run = tlearn.train(tiny_data, out=tmp_path / "run", quiet=True, split=(0.6, 0.2, 0.2))
    code, out, err = run_cli(capsys, "compare", run.path, "--speed", "--out", tmp_path / "speed.html")
    assert code == 0 and "timing" in err and "onnxruntime" in err
    heading, _, row = out.splitlines()[:3]
    columns = [cell.strip() for cell in heading.strip("|").split("|")]
    cells = dict(zip(columns, [cell.strip() for cell in row.strip("|").split("|")], strict=True))
    assert float(cells["images/s"]) > 1 and float(cells["latency"].removesuffix(" ms")) > 0
    assert "note: images/s and latency: each model on onnxruntime" in out
    # the page adds accuracy against speed as a figure of its own
    figure = re.search(r'<img src="data:image/png;base64,([^"]+)"', (tmp_path / "speed.html").read_text())
    assert figure and base64.b64decode(figure.group(1))[:4] == b"\x89PNG"
    code, out, _ = run_cli(capsys, "compare", run.path, "--out", tmp_path / "plain.html")
    assert code == 0 and "images/s" not in out and "latency" not in out  # timed only when asked
    assert "<img" not in (tmp_path / "plain.html").read_text()
