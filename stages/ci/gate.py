"""The CI quality gate: this checkout's test metrics against main's, by the rules in params.yaml.

The rules are stages.quality's, read from `quality.metrics` (one record per metric: direction, floor,
tolerance). It fails when a metric misses its floor, when it moves the wrong way by more than its
tolerance, or when a gated metric is missing. With no baseline on main yet (the first run) only the
floors apply, and the verdict says so.

    python -m stages.ci.gate                      # baseline: data/metrics.json as committed on main
    python -m stages.ci.gate --base origin/main   # any git ref
    python -m stages.ci.gate --baseline old.json  # or a file
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from stages.errors import StageError, run
from stages.params import load_params
from stages.quality import Metrics, Verdict, evaluate, numeric_metrics
from stages.workspace import workspace


class GitError(StageError):
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
    metrics_file = args.metrics or workspace() / params.paths.metrics
    try:
        baseline = load_baseline(args.base, args.baseline, params.paths.metrics.as_posix())
    except GitError as error:
        print(f"gate: {error}", file=sys.stderr)
        return 2
    rules = params.quality.rules(params.evaluate.slices)
    verdict = evaluate(load_current(metrics_file), baseline, rules, args.base)
    print(format_report(verdict, args.base))
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    run(main, "gate")
