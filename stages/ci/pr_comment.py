"""The pull-request comment: metric diff, params diff and the gate's verdict against main, in markdown.

    python -m stages.ci.pr_comment --output comment.md [--base main]

It always exits 0 once it has written the comment (even for a failing gate): `make gate` is what fails
the build, and the comment explains why.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from stages.ci.gate import GitError, load_baseline, load_current, read_at_ref
from stages.errors import run
from stages.params import load_params
from stages.quality import Check, Metrics, Verdict, evaluate, flatten
from stages.workspace import workspace

TITLE = "## Model quality gate"
MISSING = "—"
ABSENT = object()  # a param that one side does not have, unlike one set to null


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def _rule(check: Check) -> str:
    rule = check.rule
    parts = []
    if rule.floor is not None:
        parts.append(f"{'≥' if rule.direction == 'higher' else '≤'} {rule.floor:.4f}")
    if rule.tolerance is not None:
        parts.append(f"{'drop' if rule.direction == 'higher' else 'rise'} ≤ {rule.tolerance:.4f}")
    return ", ".join(parts)


def _value(value: Any) -> str:
    if value is ABSENT:
        return MISSING
    text = value if isinstance(value, str) else json.dumps(value)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


FAIRNESS = "fairness."


def _row_cells(
    name: str, current: Metrics, baseline: Metrics | None, checks: Mapping[str, Check]
) -> list[str]:
    """main, this branch, change, rule, verdict: the cells every metric row has."""
    now, before = current.get(name), (baseline or {}).get(name)
    if now is None:
        change = "missing"
    elif before is None:
        change = "new" if baseline is not None else MISSING
    else:
        change = f"{now - before:+.4f}"
    check = checks.get(name)
    rule = _rule(check) if check else ""
    status = "" if check is None else ("✅" if check.passed else "❌")
    return [_number(before), _number(now), change, rule, status]


def _names(current: Metrics, baseline: Metrics | None, checks: Mapping[str, Check]) -> list[str]:
    return list(dict.fromkeys([*current, *(baseline or {}), *checks]))


def metrics_table(current: Metrics, baseline: Metrics | None, verdict: Verdict, base_label: str) -> list[str]:
    checks = {check.metric: check for check in verdict.checks}
    lines = [
        f"| Metric | {base_label} | this branch | change | rule | |",
        "|---|---:|---:|---:|---|:-:|",
    ]
    for name in _names(current, baseline, checks):
        if not name.startswith(FAIRNESS):
            lines.append("| " + " | ".join([name, *_row_cells(name, current, baseline, checks)]) + " |")
    return lines


def fairness_table(
    current: Metrics, baseline: Metrics | None, verdict: Verdict, base_label: str
) -> list[str]:
    """One row per sensitive attribute and fairness figure (`fairness.<attribute>.<figure>`)."""
    checks = {check.metric: check for check in verdict.checks}
    names = [name for name in _names(current, baseline, checks) if name.startswith(FAIRNESS)]
    if not names:
        return []
    lines = [
        f"| Group | Metric | {base_label} | this branch | change | rule | |",
        "|---|---|---:|---:|---:|---|:-:|",
    ]
    for name in names:
        attribute, _, figure = name.removeprefix(FAIRNESS).partition(".")
        lines.append(
            "| " + " | ".join([attribute, figure, *_row_cells(name, current, baseline, checks)]) + " |"
        )
    return lines


def params_diff(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, on base, here) for each flattened param that was changed, added (ABSENT on base) or removed
    (ABSENT here)."""
    rows = []
    for name in dict.fromkeys([*baseline, *current]):
        before, now = baseline.get(name, ABSENT), current.get(name, ABSENT)
        if before != now:
            rows.append((name, before, now))
    return rows


def params_table(
    current: Mapping[str, Any], baseline: Mapping[str, Any] | None, base_label: str
) -> list[str]:
    if baseline is None:
        return [f"No `params.yaml` on {base_label} to compare with."]
    rows = params_diff(current, baseline)
    if not rows:
        return [f"No parameter differs from {base_label}."]
    lines = [f"| Param | {base_label} | this branch |", "|---|---|---|"]
    lines.extend(f"| {name} | {_value(before)} | {_value(now)} |" for name, before, now in rows)
    return lines


def retrain_lines(
    counts: Mapping[str, Any] | None,
    base_counts: Mapping[str, Any] | None,
    production: Mapping[str, Any] | None,
) -> list[str]:
    """A retrain's new rows and production on the new test split, when this branch holds a retrain (its
    retrain.json has rows and differs from the base's); empty otherwise."""
    if not counts or not counts.get("rows_added") or counts == base_counts:
        return []
    lines = [
        "| new labelled rows | positive | negative | positive share | feedback ids | unknown ids | already in the data |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(
            str(counts.get(key, MISSING))
            for key in ("rows_added", "positive", "negative", "positive_fraction", "feedback_ids",
                        "unknown_ids", "already_in_data")
        ) + " |",
    ]  # fmt: skip
    if production and production.get("production") is not None:
        metric, ours, theirs = production["metric"], production["retrained"], production["production"]
        lines += [
            "",
            f"On the new test split ({production['test_rows']} rows), {metric}: this branch's model "
            f"{_number(ours)}, production v{production['production_version']} {_number(theirs)} "
            f"({ours - theirs:+.4f}).",
        ]
    elif production:
        lines += ["", f"Production could not be scored on the new test split: {production.get('error')}."]
    return lines


def verdict_lines(verdict: Verdict, base_label: str) -> list[str]:
    if verdict.passed:
        against = f"and stays within its tolerance of {base_label}" if verdict.has_baseline else ""
        lines = [f"**✅ Gate passed**: every gated metric clears its floor {against}".rstrip() + "."]
    else:
        lines = ["**❌ Gate failed**:", ""]
        lines.extend(f"- {failure}" for failure in verdict.failures)
    if verdict.notices:
        lines.append("")
        lines.extend(f"> {notice}" for notice in verdict.notices)
    return lines


def render(
    verdict: Verdict,
    current: Metrics,
    baseline: Metrics | None,
    params_current: Mapping[str, Any],
    params_baseline: Mapping[str, Any] | None,
    base_label: str = "main",
    retrain: list[str] | None = None,
) -> str:
    """The whole comment, from already-loaded data: no git, no files. `retrain`: retrain_lines'."""
    sections = [
        [TITLE],
        verdict_lines(verdict, base_label),
        ["### Metrics (test split)"],
        metrics_table(current, baseline, verdict, base_label),
    ]
    fairness = fairness_table(current, baseline, verdict, base_label)
    if fairness:
        sections += [["### Fairness (test split, by sensitive attribute)"], fairness]
    if retrain:
        sections += [["### New data (`make retrain`)"], retrain]
    sections += [
        ["### Params"],
        params_table(params_current, params_baseline, base_label),
        ["<sub>Floors and tolerances live in `params.yaml` under `quality`; `make gate` applies them.</sub>"],
    ]
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def _json_file(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="main", help="git ref to compare with (default: main)")
    parser.add_argument("--output", type=Path, help="write the markdown here (default: stdout)")
    args = parser.parse_args(argv)

    params = load_params()
    try:
        baseline = load_baseline(args.base, None, params.paths.metrics.as_posix())
        base_params_text = read_at_ref(args.base, "params.yaml")
        base_retrain_text = read_at_ref(args.base, params.paths.retrain.as_posix())
    except GitError as error:
        print(f"pr-comment: {error}", file=sys.stderr)
        return 2
    current = load_current(workspace() / params.paths.metrics)
    verdict = evaluate(current, baseline, params.quality.rules(params.evaluate.slices), args.base)
    base_params = None if base_params_text is None else flatten(yaml.safe_load(base_params_text) or {})
    here_params = flatten(yaml.safe_load((workspace() / "params.yaml").read_text()) or {})
    retrain = retrain_lines(
        _json_file(workspace() / params.paths.retrain),
        None if base_retrain_text is None else json.loads(base_retrain_text),
        _json_file(workspace() / params.paths.retrain_production),
    )
    markdown = render(verdict, current, baseline, here_params, base_params, args.base, retrain)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(markdown)
        print(f"pr-comment: wrote {args.output}")
    else:
        sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    run(main, "pr-comment")
