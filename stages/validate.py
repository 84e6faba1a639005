"""validate: check the prepared splits against the data contract; refuse bad data with a readable report."""

from __future__ import annotations

import json
import sys

import pandas as pd

from stages.config import load_params, path
from stages.contract import SPLITS, violations


def read_split(name: str) -> pd.DataFrame:
    file = path("prepared") / f"{name}.parquet"
    try:
        return pd.read_parquet(file)
    except (OSError, ValueError) as error:
        sys.exit(f"validate: cannot read {file}: {error}")


def render(found: list[dict]) -> str:
    lines = [f"validate: {len(found)} check(s) failed:"]
    for item in found:
        where = f"column '{item['column']}'" if item["column"] else "table"
        examples = f" e.g. {', '.join(item['examples'])}" if item["examples"] else ""
        lines.append(f"  - [{item['split']}] {item['check']} on {where}: {item['count']} failing{examples}")
    return "\n".join(lines)


def main() -> None:
    params = load_params()
    splits = {name: read_split(name) for name in SPLITS}
    found = violations(params, splits)
    report = {
        "passed": not found,
        "rows": {name: len(frame) for name, frame in splits.items()},
        "violations": found,
    }
    path("validation").write_text(json.dumps(report, indent=2) + "\n")
    if found:
        sys.exit(render(found))
    print(f"validate: all checks passed ({report['rows']})")


if __name__ == "__main__":
    main()
