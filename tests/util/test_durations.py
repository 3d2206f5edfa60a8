"""One rule for durations: training's --time-budget and select's --budget read the same spellings."""

from __future__ import annotations

import pytest

from tlearn.audits.select import parse_budget
from tlearn.config import build_config
from tlearn.errors import TlearnError
from tlearn.util.durations import parse_duration

SPELLINGS = [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("1h30m", 5400.0), ("2m30s", 150.0)]


@pytest.mark.parametrize(("text", "seconds"), SPELLINGS)
def test_training_and_select_read_a_duration_alike(text, seconds):
    assert parse_duration(text) == seconds
    assert build_config(data="photos", time_budget=text).time_budget == seconds
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m", "1h30"])
def test_training_and_select_refuse_the_same_texts(text):
    with pytest.raises(ValueError, match="duration such as 90s"):
        parse_duration(text)
    with pytest.raises(TlearnError, match=r"time_budget: .*duration such as 90s"):
        build_config(data="photos", time_budget=text)
    with pytest.raises(TlearnError, match="expected a duration"):
        parse_budget(text)
