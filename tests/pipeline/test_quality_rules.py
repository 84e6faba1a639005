"""One rule engine: a metric's record (direction, floor, tolerance) means the same to `register`, which
decides staging, and to the CI gate, which decides a pull request."""

from __future__ import annotations

import pytest

from stages.params import Quality
from stages.quality import Rule, check_metric, clears_floor, gain
from stages.register import decide


@pytest.mark.parametrize(
    ("direction", "ours", "theirs", "expected"),
    [("higher", 0.93, 0.90, 0.03), ("higher", 0.90, 0.93, -0.03), ("lower", 0.25, 0.30, 0.05)],
)
def test_gain_is_measured_in_the_metric_s_own_direction(direction, ours, theirs, expected):
    assert gain(Rule(direction=direction), ours, theirs) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("direction", "value", "passes"),
    [("higher", 0.91, True), ("higher", 0.90, True), ("higher", 0.89, False),
     ("lower", 0.29, True), ("lower", 0.30, True), ("lower", 0.31, False)],
)  # fmt: skip
def test_a_floor_is_a_minimum_when_higher_is_better_and_a_ceiling_when_lower_is(direction, value, passes):
    floor = 0.90 if direction == "higher" else 0.30
    assert clears_floor(Rule(direction=direction, floor=floor), value) is passes


def test_a_non_finite_value_never_clears_a_floor():
    assert not clears_floor(Rule(floor=0.5), float("nan"))
    assert not clears_floor(Rule(direction="lower", floor=0.5), float("-inf"))


@pytest.mark.parametrize("direction", ["higher", "lower"])
@pytest.mark.parametrize("value", [0.70, 0.799999, 0.80, 0.800001, 0.90])
def test_register_and_the_gate_agree_on_every_floor(direction, value):
    rule = Rule(direction=direction, floor=0.80)
    quality = Quality(primary_metric="m", metrics={"m": rule})
    register_passes = not any(
        reason.startswith("FAIL floor") for reason in decide({"m": value}, quality, []).reasons
    )
    gate_passes = check_metric("m", rule, value, baseline=None).passed
    assert register_passes is gate_passes is clears_floor(rule, value)
