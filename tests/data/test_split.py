"""prepare's split: seeded, leak-free (identical rows always land in the same split), and stable as data
grows (a row's split depends on that row alone)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.prepare import split


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.integers(0, 4000, rows), "label": rng.choice(["a", "b"], rows, p=[0.8, 0.2])})


@pytest.fixture
def frame() -> pd.DataFrame:
    return _frame(20_000, 3)  # many exact duplicates: 4,000 values of x, two labels


def _where(parts: dict[str, pd.DataFrame]) -> pd.Series:
    return pd.concat([pd.Series(name, index=part.index) for name, part in parts.items()]).sort_index()


def test_the_split_is_a_partition_in_the_asked_proportions(frame):
    parts = split(frame, val_fraction=0.15, test_fraction=0.15, seed=1)
    assert sum(len(part) for part in parts.values()) == len(frame)
    combined = pd.concat(parts.values()).sort_index()
    pd.testing.assert_frame_equal(combined, frame)
    distinct = len(frame.drop_duplicates())  # about 7,000: a fraction's sampling noise is about 0.004
    for name, fraction in (("val", 0.15), ("test", 0.15)):
        assert abs(len(parts[name].drop_duplicates()) / distinct - fraction) < 0.02, name


def test_identical_rows_never_straddle_two_splits(frame):
    parts = split(frame, val_fraction=0.15, test_fraction=0.15, seed=1)
    keys = {name: set(map(tuple, part.to_numpy().tolist())) for name, part in parts.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_each_split_keeps_the_class_balance_up_to_sampling_noise(frame):
    """Not stratified: about 3,000 rows per held-out split put its balance within ±0.02 of the data's
    (three standard deviations)."""
    overall = (frame["label"] == "b").mean()
    for part in split(frame, val_fraction=0.15, test_fraction=0.15, seed=1).values():
        assert abs((part["label"] == "b").mean() - overall) < 0.02


def test_the_same_seed_gives_the_same_split_and_another_seed_another(frame):
    first = split(frame, 0.15, 0.15, seed=1)
    again = split(frame, 0.15, 0.15, seed=1)
    other = split(frame, 0.15, 0.15, seed=2)
    assert all(first[name].index.equals(again[name].index) for name in first)
    assert not first["test"].index.equals(other["test"].index)


def test_appended_rows_move_no_existing_row_and_are_split_by_the_same_rule(frame):
    before = _where(split(frame, 0.15, 0.15, seed=1))
    new = _frame(5_000, 4)
    grown = pd.concat([frame, new], ignore_index=True)
    after = _where(split(grown, 0.15, 0.15, seed=1))
    pd.testing.assert_series_equal(after.iloc[: len(frame)], before)
    # The new rows go where they would have gone on their own (and where their twins already are).
    alone = _where(split(new, 0.15, 0.15, seed=1))
    assert after.iloc[len(frame) :].to_numpy().tolist() == alone.to_numpy().tolist()


def test_a_row_keeps_its_split_whatever_the_order_and_the_dtype_its_file_was_read_with(frame):
    before = _where(split(frame, 0.15, 0.15, seed=1))
    # Reversed rows and columns, and `x` read as float (as a column with a missing value would be).
    shuffled = frame.iloc[::-1][["label", "x"]].astype({"x": "float64"})
    after = _where(split(shuffled, 0.15, 0.15, seed=1))
    pd.testing.assert_series_equal(after, before)
