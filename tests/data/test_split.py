"""prepare's split: seeded, stratified, and leak-free (identical rows always land in the same split)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.prepare import split


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = 2000
    data = pd.DataFrame({"x": rng.integers(0, 400, rows), "label": rng.choice(["a", "b"], rows, p=[0.8, 0.2])})
    return data  # many exact duplicates: 400 values of x, two labels


def test_the_split_is_a_partition_in_the_asked_proportions(frame):
    parts = split(frame, "label", val_fraction=0.15, test_fraction=0.15, seed=1)
    assert sum(len(part) for part in parts.values()) == len(frame)
    combined = pd.concat(parts.values()).sort_index()
    pd.testing.assert_frame_equal(combined, frame)
    distinct = len(frame.drop_duplicates())
    for name, fraction in (("val", 0.15), ("test", 0.15)):
        assert abs(len(parts[name].drop_duplicates()) / distinct - fraction) < 0.02, name


def test_identical_rows_never_straddle_two_splits(frame):
    parts = split(frame, "label", val_fraction=0.15, test_fraction=0.15, seed=1)
    keys = {name: set(map(tuple, part.to_numpy().tolist())) for name, part in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_each_split_keeps_the_class_balance(frame):
    overall = (frame["label"] == "b").mean()
    for part in split(frame, "label", val_fraction=0.15, test_fraction=0.15, seed=1).values():
        assert abs((part["label"] == "b").mean() - overall) < 0.03


def test_the_same_seed_gives_the_same_split_and_another_seed_another(frame):
    first = split(frame, "label", 0.15, 0.15, seed=1)
    again = split(frame, "label", 0.15, 0.15, seed=1)
    other = split(frame, "label", 0.15, 0.15, seed=2)
    assert all(first[name].index.equals(again[name].index) for name in first)
    assert not first["test"].index.equals(other["test"].index)
