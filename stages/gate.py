"""The CI quality gate: this checkout's test metrics against main's, by the rules in params.yaml.

It fails when a metric misses its absolute floor (`quality.floors`), when it moves the wrong way by more
than its tolerance (`quality.tolerances`, each with its direction), or when a gated metric is missing.
With no baseline on main yet (the first run) only the floors apply, and the verdict says so.

    python -m stages.gate                      # baseline: data/metrics.json as committed on main
    python -m stages.gate --base origin/main   # any git ref
    python -m stages.gate --baseline old.json  # or a file
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stages.config import load_params, path, workspace

Direction = Literal["higher", "lower"]
Metrics = dict[str, float]

# Metrics are rounded to 6 decimals when written; a move of exactly the tolerance must not fail on the
# float error of the subtraction.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Rule:
    """What params.yaml says about one metric."""

    direction: Direction = "higher"
    floor: float | None = None  # a minimum when higher is better, a maximum when lower is better
    tolerance: float | None = None  # how far it may move the wrong way against the baseline


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


def rules_from_params(quality: Mapping[str, Any]) -> dict[str, Rule]:
    """One Rule per metric named in `quality.floors` or `quality.tolerances`, in that order."""
    floors = quality.get("floors") or {}
    tolerances = quality.get("tolerances") or {}
    rules: dict[str, Rule] = {}
    for metric in [*floors, *(name for name in tolerances if name not in floors)]:
        spec = tolerances.get(metric) or {}
        direction = spec.get("direction", "higher")
        if direction not in ("higher", "lower"):
            raise ValueError(
                f"quality.tolerances.{metric}.direction must be 'higher' or 'lower', not {direction!r}"
            )
        floor = floors.get(metric)
        tolerance = spec.get("tolerance")
        rules[metric] = Rule(
            direction=direction,
            floor=None if floor is None else float(floor),
            tolerance=None if tolerance is None else float(tolerance),
        )
    return rules


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
    return {
        name: float(value)
        for name, value in flatten(tree).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def check_metric(metric: str, rule: Rule, current: float | None, baseline: float | None) -> Check:
    failures: list[str] = []
    if current is None:
        failures.append(f"{metric} is missing from the metrics")
    elif not math.isfinite(current):
        failures.append(f"{metric} is {current}, not a finite number")
    else:
        higher = rule.direction == "higher"
        if rule.floor is not None:
            if higher and current < rule.floor:
                failures.append(f"{metric} {current:.4f} is below its floor {rule.floor:.4f}")
            if not higher and current > rule.floor:
                failures.append(f"{metric} {current:.4f} is above its ceiling {rule.floor:.4f}")
        if rule.tolerance is not None and baseline is not None:
            worsening = (baseline - current) if higher else (current - baseline)
            if worsening > rule.tolerance + _EPSILON:
                failures.append(
                    f"{metric} regressed by {worsening:.4f} ({baseline:.4f} → {current:.4f}), "
                    f"more than its tolerance {rule.tolerance:.4f} ({rule.direction} is better)"
                )
    return Check(metric=metric, rule=rule, current=current, baseline=baseline, failures=tuple(failures))


def evaluate(
    current: Metrics, baseline: Metrics | None, rules: Mapping[str, Rule], base_label: str = "main"
) -> Verdict:
    """The gate itself: a pure function of two metric sets and the rules."""
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


# ---------------------------------------------------------------- reading the baseline from git


class GitError(RuntimeError):
    pass


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=workspace(), capture_output=True, text=True, check=False)


def resolve_ref(ref: str) -> str | None:
    """`ref` itself, or `origin/<ref>` where only the remote-tracking branch exists (CI checkouts)."""
    for candidate in (ref, f"origin/{ref}"):
        if _git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}").returncode == 0:
            return candidate
    return None


def read_at_ref(ref: str, relative_path: str) -> str | None:
    """A file's text as committed on `ref`; None when the ref or the file does not exist there.

    A shallow clone cannot tell "no baseline" from "history not fetched", so it is refused."""
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        raise GitError("this is a shallow clone: fetch the full history (actions/checkout fetch-depth: 0)")
    resolved = resolve_ref(ref)
    if resolved is None:
        return None
    shown = _git("show", f"{resolved}:{relative_path}")
    return shown.stdout if shown.returncode == 0 else None


def load_baseline(base: str, baseline_file: Path | None, metrics_path: str) -> Metrics | None:
    if baseline_file is not None:
        return numeric_metrics(json.loads(baseline_file.read_text())) if baseline_file.exists() else None
    text = read_at_ref(base, metrics_path)
    return None if text is None else numeric_metrics(json.loads(text))


def load_current(metrics_file: Path) -> Metrics:
    if not metrics_file.exists():
        return {}
    return numeric_metrics(json.loads(metrics_file.read_text()))


def format_report(verdict: Verdict, base_label: str) -> str:
    lines = []
    for check in verdict.checks:
        status = "ok  " if check.passed else "FAIL"
        current = "missing" if check.current is None else f"{check.current:.4f}"
        baseline = "-" if check.baseline is None else f"{check.baseline:.4f}"
        lines.append(f"{status} {check.metric:<12} {current:>8}  ({base_label} {baseline})")
        lines.extend(f"     {failure}" for failure in check.failures)
    lines.extend(f"note: {notice}" for notice in verdict.notices)
    lines.append("gate: passed" if verdict.passed else f"gate: FAILED ({len(verdict.failures)} problem(s))")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="main", help="git ref holding the baseline metrics (default: main)")
    parser.add_argument("--baseline", type=Path, help="a baseline metrics file instead of a git ref")
    parser.add_argument(
        "--metrics", type=Path, help="current metrics (default: paths.metrics in params.yaml)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params()
    metrics_file = args.metrics or path("metrics")
    try:
        baseline = load_baseline(args.base, args.baseline, params["paths"]["metrics"])
    except GitError as error:
        print(f"gate: {error}", file=sys.stderr)
        return 2
    verdict = evaluate(load_current(metrics_file), baseline, rules_from_params(params["quality"]), args.base)
    print(format_report(verdict, args.base))
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
