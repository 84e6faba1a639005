"""validate: check the prepared splits against the data contract; refuse bad data with a readable report."""

from __future__ import annotations

import json

import pandas as pd

from stages.contract import render, violations
from stages.errors import StageError, run
from stages.params import SPLITS, load_params
from stages.workspace import output, workspace


class ContractViolated(StageError):
    """The data breaks the contract; the message is the report."""


def read_split(name: str) -> pd.DataFrame:
    file = workspace() / load_params().paths.prepared / f"{name}.parquet"
    try:
        return pd.read_parquet(file)
    except (OSError, ValueError) as error:
        raise StageError(f"cannot read {file}: {error}") from None


def main() -> None:
    params = load_params()
    splits = {name: read_split(name) for name in SPLITS}
    found = violations(params, splits)
    report = {
        "passed": not found,
        "rows": {name: len(frame) for name, frame in splits.items()},
        "violations": found,
    }
    output(params.paths.validation).write_text(json.dumps(report, indent=2) + "\n")
    if found:
        raise ContractViolated(render(found))
    print(f"validate: all checks passed ({report['rows']})")


if __name__ == "__main__":
    run(main, "validate")
