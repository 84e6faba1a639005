"""`make contract SOURCE=data/raw/loans.csv TARGET=default POSITIVE=yes [NAME=] [SLICES=a,b] [SEP=] [HEADER=]`

Reads your file, drafts its contract and writes every params.yaml block that depends on the data: `data`
(source, sha256, read options, dropped columns), `features`, `validate` (row floors and a class-balance
band), `mlflow.model_name` and `mlflow.experiment`, `evaluate.slices`, and the `quality` floors, from a
quick baseline that it fits and prints, minus a margin. Every other block and every comment stays. It
prints what it decided, column by column, and what to review. Then `make run`.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd

from stages.classification import classification_metrics
from stages.contract.inference import Draft, draft_contract, sniff_read
from stages.errors import StageError, run
from stages.features import labels, model_inputs
from stages.params import Features, load_params
from stages.params_writer import update_params
from stages.prepare import (
    PACKAGE_PREFIX,
    column_name,
    normalise,
    read_table,
    resolve_source,
    sha256_of,
    split,
)
from stages.workspace import workspace

# How far below the baseline's validation score each floor sits: a first model must clear it easily,
# and a later one that falls under it has lost what a plain logistic regression already had. On a small
# validation split the score itself is uncertain (about 0.04 for ROC AUC on 150 rows), so the margin
# grows by SAMPLING_MARGIN / sqrt(rows).
FLOOR_MARGINS = {"roc_auc": 0.03, "pr_auc": 0.05, "accuracy": 0.03}
SAMPLING_MARGIN = 0.5
MIN_ROWS_SHARE = 0.5  # each split's row floor: half of what this file gives it
BALANCE_BAND = 0.10  # the positive fraction may move this far either way


DELIMITER_NAMES = {"space": " ", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def _delimiter(value: str | None) -> str | None:
    """SEP= as written, or by name (`SEP=space`: make cannot pass a lone space)."""
    if not value:
        return None
    return DELIMITER_NAMES.get(value.lower(), value.encode().decode("unicode_escape"))


def _header(value: str | None) -> bool | None:
    if not value:
        return None
    if value.lower() in ("yes", "true", "1"):
        return True
    if value.lower() in ("no", "false", "0"):
        return False
    raise StageError(f"HEADER={value}: say yes or no")


def _model_name(name: str | None, source: str) -> str:
    stem = Path(source.removeprefix(PACKAGE_PREFIX)).name.split(".")[0]
    chosen = name or stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", chosen):
        raise StageError(f"NAME={chosen}: a model name is letters, digits, '-', '_' and '.'")
    return chosen


def baseline_floors(
    frame_splits: dict[str, pd.DataFrame], features: Features, seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    """A logistic regression on this file's own train split, scored on its validation split: what any
    model here should clear. The floors sit FLOOR_MARGINS below it."""
    from stages.modelling import build_pipeline

    train, val = frame_splits["train"], frame_splits["val"]
    pipeline = build_pipeline("logreg", features, {"C": 1.0, "max_iter": 1000}, seed)
    pipeline.fit(model_inputs(train, features), labels(train, features))
    probability = pipeline.predict_proba(model_inputs(val, features))[:, 1]
    scores = classification_metrics(labels(val, features), probability, features.decision_threshold)
    sampling = SAMPLING_MARGIN / math.sqrt(len(val))
    floors = {
        metric: max(0.0, math.floor((scores[metric] - margin - sampling) * 100) / 100)
        for metric, margin in FLOOR_MARGINS.items()
    }
    return floors, {metric: scores[metric] for metric in FLOOR_MARGINS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make contract", description=__doc__)
    parser.add_argument("--source", required=True, help="a file under paths.raw, or package:<dist>/<path>")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument("--positive", required=True, help="the positive label, in the target's own type")
    parser.add_argument("--name", help="model and experiment name (default: the file's stem)")
    parser.add_argument("--slices", default="", help="comma-separated columns to report fairness by")
    parser.add_argument("--sep", help="the delimiter, or space/tab/comma/semicolon/pipe (default: sniffed)")
    parser.add_argument("--header", help="yes or no (default: sniffed)")
    args = parser.parse_args(argv)

    params = load_params()
    file = resolve_source(args.source, params.paths.raw)
    read, notes = sniff_read(file, _delimiter(args.sep), _header(args.header))
    table = read_table(file, read)
    raw_names = [str(name) for name in table.columns]
    frame = normalise(table, read)
    for raw, name in zip(raw_names, frame.columns, strict=True):
        if raw != name:
            notes.append(f"column {raw!r} is named {name!r}")
    draft = draft_contract(frame, raw_names, read, args.target, args.positive)

    slices = [column_name(name) for name in args.slices.split(",") if name.strip()]
    unknown = [name for name in slices if name not in draft.categorical]
    if unknown:
        raise StageError(f"SLICES={args.slices}: {unknown} are not categorical features of this file")
    features_block = {
        "target": draft.target,
        "positive_label": draft.positive_label,
        "labels": draft.labels,
        "decision_threshold": params.features.decision_threshold,
        "numeric": draft.numeric,
        "categorical": draft.categorical,
    }
    features = Features.model_validate(features_block)
    prepare = params.prepare
    kept = frame.drop(columns=draft.drop_columns)
    parts = split(kept, prepare.val_fraction, prepare.test_fraction, prepare.seed)
    floors, baseline = baseline_floors(parts, features, prepare.seed)
    min_rows = {name: max(1, int(len(part) * MIN_ROWS_SHARE)) for name, part in parts.items()}
    band = {
        "min": max(0.0, math.floor((draft.positive_fraction - BALANCE_BAND) * 100) / 100),
        "max": min(1.0, math.ceil((draft.positive_fraction + BALANCE_BAND) * 100) / 100),
    }
    name = _model_name(args.name, args.source)

    update_params(
        {
            "data": {
                "source": args.source,
                "sha256": sha256_of(file),
                "read": read.model_dump(),
                "drop_columns": draft.drop_columns,
                "sample_rows": None,
            },
            "features": features_block,
            "validate": {"min_rows": min_rows, "positive_fraction": band},
            "mlflow.model_name": name,
            # Candidates of different data sets must never share a registered model: each has its own schema.
            "mlflow.candidate_model_name": f"{name}-candidates",
            "mlflow.experiment": name,
            "evaluate.slices": slices,
            **{f"quality.metrics.{metric}.floor": floor for metric, floor in floors.items()},
        },
        workspace() / "params.yaml",
    )
    report(draft, notes, baseline, floors, min_rows, band, name, args.source)


def report(
    draft: Draft,
    notes: list[str],
    baseline: dict[str, float],
    floors: dict[str, float],
    min_rows: dict[str, int],
    band: dict[str, float],
    name: str,
    source: str,
) -> None:
    print(f"contract: {source}: {draft.rows} rows, {len(draft.decisions)} columns")
    for note in notes:
        print(f"  - {note}")
    width = max(len(decision.name) for decision in draft.decisions)
    for decision in draft.decisions:
        print(f"  {decision.name:<{width}}  {decision.role:<11}  {decision.reason}")
    print(f"contract: positive label {draft.positive_label!r} in {draft.positive_fraction:.1%} of rows; "
          f"validate allows {band['min']}…{band['max']} and at least {min_rows} rows")  # fmt: skip
    scores = ", ".join(f"{metric}={value:.4f}" for metric, value in baseline.items())
    print(f"contract: baseline (logistic regression, validation split): {scores}")
    print(f"contract: quality floors, the baseline less a margin (review them): {floors}")
    print(f"contract: model and experiment {name!r}")
    print("contract: wrote params.yaml (data, features, validate, mlflow, evaluate.slices, quality floors)")
    print("review: " + "; ".join(draft.review) + ". Then `make run`.")


if __name__ == "__main__":
    run(main, "contract")
