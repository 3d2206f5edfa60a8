"""`tlearn predict --ray`: the same answers, in the same order, as the local path, from actors on a local Ray
cluster; clear one-line errors when Ray or the cluster is missing."""

from __future__ import annotations

import builtins
import shutil

import numpy as np
import pytest

import tlearn
from helpers import run_cli, write_broken_files
from tlearn.errors import TlearnError


def test_ray_answers_equal_the_local_ones_in_order_with_failures_in_place(exported_model, local_ray, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(exported_model.data, folder / "good")
    reasons = write_broken_files(folder / "bad")
    for model in (exported_model.run, exported_model.onnx):
        local = list(tlearn.predict(model, [folder], top_k=2))
        on_ray = list(tlearn.predict_on_ray(model, [folder], top_k=2))  # joins the fixture's cluster
        assert [p.source for p in on_ray] == [p.source for p in local]
        assert [p.labels for p in on_ray] == [p.labels for p in local]
        assert [p.error for p in on_ray] == [p.error for p in local]
        assert sum(p.error is not None for p in on_ray) == len(reasons)
        for ours, theirs in zip(on_ray, local, strict=True):
            np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-6)
    code, out, _ = run_cli(capsys, "predict", exported_model.run, folder, "--ray", "auto", "--format", "csv", "-q")
    assert code == 1 and out.count("\n") > 28  # every image printed; exit 1 because some files are unreadable


def test_rows_come_out_in_input_order_however_the_batches_arrive():
    from tlearn.deploy.ray_predict import in_input_order

    rng = np.random.default_rng(0)
    positions = rng.permutation(40)
    batches = [
        {
            "position": chunk,
            "probabilities": np.eye(40)[chunk],
            "score": chunk.astype(float),
            "error": np.array([f"e{p}" for p in chunk], dtype=object),
        }
        for chunk in np.array_split(positions, 7)
    ]
    counted = []
    rows = list(in_input_order(batches, counted.append))
    assert [row[0] for row in rows] == list(range(40)) and sum(counted) == 40
    assert all(row[1].argmax() == row[0] and row[2] == row[0] and row[3] == f"e{row[0]}" for row in rows)


def test_an_unreachable_cluster_is_one_line_not_a_hang(exported_model):
    with pytest.raises(TlearnError, match=r"cannot reach the Ray cluster at '127.0.0.1:1': Connection refused"):
        list(tlearn.predict_on_ray(exported_model.run, [exported_model.data], address="127.0.0.1:1"))


def test_without_ray_the_error_says_what_to_install(exported_model, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(TlearnError, match=r'pip install "tlearn\[ray\]"'):
        list(tlearn.predict_on_ray(exported_model.run, [exported_model.data], address="local"))
