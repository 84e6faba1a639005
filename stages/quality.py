"""The one rule engine for model quality. Each metric's rule is one record in params.yaml
(`quality.metrics.<name>: {direction, floor, tolerance}`); `register` applies it to decide `staging`, and
the CI gate applies it to decide a pull request. Both call these functions, so a floor, a direction and
a tolerance mean the same thing everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from stages.params import MetricRule, ParamsError, describe

Rule = MetricRule
Metrics = dict[str, float]

# Metrics are rounded to 6 decimals when written; a move of exactly the tolerance must not fail on the
# float error of the subtraction.
_EPSILON = 1e-9
_RULES = TypeAdapter(dict[str, MetricRule])


def rules_from_params(metrics: Mapping[str, Any]) -> dict[str, Rule]:
    """`quality.metrics` as rules, in their order; a record that is not a rule is a ParamsError."""
    try:
        return _RULES.validate_python(dict(metrics))
    except ValidationError as error:
        raise ParamsError(describe(error, "quality.metrics")) from None


def gain(rule: Rule, ours: float, theirs: float) -> float:
    """How much better `ours` is than `theirs`, in the metric's own direction (negative: worse)."""
    return (ours - theirs) if rule.direction == "higher" else (theirs - ours)


def clears_floor(rule: Rule, value: float) -> bool:
    """At or above the floor when higher is better; at or below it (a ceiling) when lower is better."""
    return rule.floor is None or (math.isfinite(value) and gain(rule, value, rule.floor) >= 0)


def floor_word(rule: Rule) -> str:
    return "floor" if rule.direction == "higher" else "ceiling"


@dataclass(frozen=True)
class Check:
    metric: str
    rule: Rule
    current: float | None
    baseline: float | None
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def change(self) -> float | None:
        if self.current is None or self.baseline is None:
            return None
        return self.current - self.baseline


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    has_baseline: bool
    notices: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[str]:
        return [failure for check in self.checks for failure in check.failures]


def check_metric(metric: str, rule: Rule, current: float | None, baseline: float | None) -> Check:
    """One metric against its floor and, when there is a baseline, against its tolerance."""
    failures: list[str] = []
    if current is None:
        failures.append(f"{metric} is missing from the metrics")
    elif not math.isfinite(current):
        failures.append(f"{metric} is {current}, not a finite number")
    else:
        if not clears_floor(rule, current):
            side = "below" if rule.direction == "higher" else "above"
            failures.append(f"{metric} {current:.4f} is {side} its {floor_word(rule)} {rule.floor:.4f}")
        if rule.tolerance is not None and baseline is not None:
            worsening = -gain(rule, current, baseline)
            if worsening > rule.tolerance + _EPSILON:
                failures.append(
                    f"{metric} regressed by {worsening:.4f} ({baseline:.4f} → {current:.4f}), "
                    f"more than its tolerance {rule.tolerance:.4f} ({rule.direction} is better)"
                )
    return Check(metric=metric, rule=rule, current=current, baseline=baseline, failures=tuple(failures))


def evaluate(
    current: Metrics, baseline: Metrics | None, rules: Mapping[str, Rule], base_label: str = "main"
) -> Verdict:
    """Every rule against two metric sets: a pure function, the CI gate itself."""
    notices: list[str] = []
    if baseline is None:
        notices.append(f"No baseline metrics on {base_label} yet: only the absolute floors were checked.")
    checks = []
    for metric, rule in rules.items():
        previous = None if baseline is None else baseline.get(metric)
        if baseline is not None and previous is None and rule.tolerance is not None:
            notices.append(f"{metric} has no baseline on {base_label}: its tolerance was not checked.")
        checks.append(check_metric(metric, rule, current.get(metric), previous))
    return Verdict(checks=tuple(checks), has_baseline=baseline is not None, notices=tuple(notices))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, the way DVC names metrics and params; lists stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numeric_metrics(tree: Mapping[str, Any]) -> Metrics:
    """A metrics file as the rules see it: dotted names to numbers; anything else is left out."""
    return {
        name: float(value)
        for name, value in flatten(tree).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
