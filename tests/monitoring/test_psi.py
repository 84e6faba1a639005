"""The PSI computation (api/drift.py) on its own: a hand-computed value, sampling noise, a known shift,
and the reference bins and counts it rests on."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from api.drift import (
    PROPORTION_FLOOR,
    DriftMonitor,
    feature_bins,
    feature_psi,
    probability_proportions,
    psi,
)

ROWS = 10_000
# A training distribution as stages/features.py logs it: deciles of a numeric feature, the frequencies
# of a categorical one (one under 1%), and missing fractions.
METADATA = {
    "feature_order": ["age", "colour"],
    "numeric": {
        "age": {
            "missing_fraction": 0.1,
            "histogram": {
                "edges": [17.0, 22.0, 26.0, 30.0, 34.0, 38.0, 42.0, 46.0, 51.0, 58.0, 90.0],
                "fractions": [0.1] * 10,
            },
        }
    },
    "categorical": {
        "colour": {
            "allowed": ["blue", "green", "red", "violet", "white"],
            "missing_fraction": 0.0,
            "frequencies": {"blue": 0.6, "green": 0.3, "red": 0.095, "violet": 0.005},
        }
    },
}


def sample(rng: np.random.Generator, rows: int, age_shift: float = 0.0) -> dict[str, list]:
    """Rows drawn from METADATA's distribution: ages uniform within a decile, 10% missing."""
    edges = METADATA["numeric"]["age"]["histogram"]["edges"]
    decile = rng.integers(0, 10, rows)
    ages = rng.uniform(np.take(edges, decile), np.take(edges, decile + 1)) + age_shift
    ages = np.clip(np.floor(ages), 17, 90)
    missing = rng.random(rows) < 0.1
    frequencies = METADATA["categorical"]["colour"]["frequencies"]
    colours = rng.choice(list(frequencies), rows, p=list(frequencies.values()))
    return {
        "age": [None if gone else float(age) for age, gone in zip(ages, missing, strict=True)],
        "colour": colours.tolist(),
    }


def test_psi_matches_a_hand_computed_value():
    # (0.75 - 0.5) ln(0.75 / 0.5) + (0.25 - 0.5) ln(0.25 / 0.5) = 0.25 ln 1.5 + 0.25 ln 2
    assert psi(np.array([0.5, 0.5]), np.array([3, 1])) == pytest.approx(0.25 * math.log(3), abs=1e-12)


def test_psi_is_zero_when_live_proportions_equal_the_reference():
    for bins in feature_bins(METADATA):
        assert psi(bins.reference, bins.reference * 12_345) == pytest.approx(0.0, abs=1e-12)


def test_an_empty_bin_gives_a_large_but_finite_psi():
    value = psi(np.array([0.5, 0.5, 0.0]), np.array([0, 10, 0]))
    assert math.isfinite(value)
    assert value == pytest.approx(
        (PROPORTION_FLOOR - 0.5) * math.log(PROPORTION_FLOOR / 0.5) + 0.5 * math.log(2), rel=1e-9
    )


def test_psi_of_no_rows_is_refused():
    with pytest.raises(ValueError, match="no live rows"):
        psi(np.array([0.5, 0.5]), np.array([0, 0]))


def test_reference_bins_follow_the_metadata():
    age, colour = feature_bins(METADATA)
    # Ten deciles, then missing: the deciles share the 90% of rows that are present.
    assert age.size == 11
    np.testing.assert_allclose(age.reference, [0.09] * 10 + [0.1])
    # Common categories alone; violet (0.5%) in the rare bin; white, allowed but never seen, unseen.
    assert colour.labels() == ["blue", "green", "red", "rare", "unseen", "missing"]
    np.testing.assert_allclose(colour.reference, [0.6, 0.3, 0.095, 0.005, 0.0, 0.0])
    assert colour.index_many(["blue", "violet", "white", None]).tolist() == [0, 3, 4, 5]
    # [e0, e1) ... [e9, e10], as np.histogram counts; beyond the range, the first or last bin.
    assert age.index_many([10.0, 17.0, 21.9, 22.0, 58.0, 90.0, 99.0, None]).tolist() == [
        0,
        0,
        0,
        1,
        9,
        9,
        9,
        10,
    ]


def test_sampling_alone_stays_below_0_02_on_10000_rows():
    columns = sample(np.random.default_rng(7), ROWS)
    found = feature_psi(METADATA, columns)
    assert set(found) == {"age", "colour"}
    assert max(found.values()) < 0.02, found


def test_a_known_shift_is_above_0_25_and_leaves_the_other_feature_alone():
    columns = sample(np.random.default_rng(7), ROWS, age_shift=25)
    found = feature_psi(METADATA, columns)
    assert found["age"] > 0.25
    assert found["colour"] < 0.02


def test_one_record_at_a_time_counts_what_a_batch_counts():
    columns = sample(np.random.default_rng(3), 500)
    probabilities = np.random.default_rng(4).random(500)
    probabilities[:3] = [0.0, 1.0, 0.1]  # the edges of the probability bins
    one, batch = (DriftMonitor(feature_bins(METADATA), None, 10_000, 10) for _ in range(2))
    for index, probability in enumerate(probabilities.tolist()):
        one.count_one({name: values[index] for name, values in columns.items()}, probability)
    batch.count_batch(columns, probabilities)
    np.testing.assert_array_equal(one.window(), batch.window())
    assert one.rows == batch.rows == 500
    assert batch.counts()["prediction"].sum() == 500


def test_the_monitor_reports_what_evaluate_reports():
    columns = sample(np.random.default_rng(5), 2_000, age_shift=10)
    monitor = DriftMonitor(feature_bins(METADATA), np.full(10, 0.1), 10_000, 10)
    monitor.count_batch(columns, np.random.default_rng(6).random(2_000))
    rows, features, prediction = monitor.psi()
    assert rows == 2_000
    assert features == pytest.approx(feature_psi(METADATA, columns), abs=1e-12)
    assert prediction is not None and prediction < 0.02


def test_old_rows_age_out_of_the_window():
    rng = np.random.default_rng(11)
    monitor = DriftMonitor(feature_bins(METADATA), None, window_rows=1_000, buckets=10)
    shifted = sample(rng, 1_000, age_shift=25)
    monitor.count_batch(shifted, rng.random(1_000))
    assert monitor.psi()[1]["age"] > 0.25
    for _ in range(10):  # ten sub-windows of 100 rows: every shifted row has aged out
        monitor.count_batch(sample(rng, 100), rng.random(100))
    rows, features, _ = monitor.psi()
    assert 900 <= rows <= 1_000
    assert features["age"] < 0.1


def test_the_window_holds_between_all_but_one_and_all_of_its_sub_windows():
    monitor = DriftMonitor(feature_bins(METADATA), None, window_rows=1_000, buckets=4)
    columns = sample(np.random.default_rng(1), 1)
    for count in range(1, 3_000):
        monitor.count_one({name: values[0] for name, values in columns.items()}, 0.5)
        assert min(count, 750) <= monitor.rows <= 1_000


def test_a_batch_larger_than_a_sub_window_spills_into_the_next_ones():
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(feature_bins(METADATA), None, window_rows=1_000, buckets=4)
    for _ in range(5):
        monitor.count_batch(sample(rng, 999), rng.random(999))
        assert 750 <= monitor.rows <= 1_000
    assert monitor.counts()["age"].sum() == monitor.rows


def test_the_prediction_reference_is_ten_equal_bins():
    proportions = probability_proportions(np.array([0.0, 0.05, 0.1, 0.55, 0.99, 1.0]))
    assert len(proportions) == 10
    assert proportions == pytest.approx([2 / 6, 1 / 6, 0, 0, 0, 1 / 6, 0, 0, 0, 2 / 6])


@pytest.mark.parametrize(
    "fill",
    ["blue", "__missing__", None],
    ids=["missing filled with a training category", "missing with a column of its own", "no column"],
)
def test_counts_read_off_a_one_hot_matrix_equal_the_lookups(fill):
    """As the fast predictor encodes: a column per training category; a missing value gets its fill's
    column (or none), an unseen category none."""
    positions = {"blue": 1, "green": 2, "red": 3, "violet": 4, "__missing__": 5}  # column 0 is age's
    positions[None] = positions[fill] if fill else -2
    rng = np.random.default_rng(9)
    columns = sample(rng, 900)
    columns["colour"] = [rng.choice(["white", None, value]) for value in columns["colour"]]
    matrix = np.zeros((900, 6))
    for row, value in enumerate(columns["colour"]):
        column = positions.get(value, -1)
        if column >= 0:
            matrix[row, column] = 1.0
    probabilities = rng.random(900)
    by_lookup, by_matrix = (DriftMonitor(feature_bins(METADATA), None, 1_000, 4) for _ in range(2))
    by_matrix.read_one_hot([("colour", positions)], 6)
    assert by_matrix.reads_one_hot
    bounds = np.cumsum([0, 125, 125, 300, 100, 250])  # in 250-row sub-windows: whole, and split
    for start, stop in itertools.pairwise(bounds):
        part = {name: values[start:stop] for name, values in columns.items()}
        unknown = {
            "colour": sum(1 for value in part["colour"] if value is not None and value not in positions)
        }
        by_lookup.count_batch(part, probabilities[start:stop])
        by_matrix.count_batch(part, probabilities[start:stop], matrix[start:stop], unknown)
        np.testing.assert_array_equal(by_matrix.window(), by_lookup.window())
