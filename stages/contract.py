"""The data contract, declared once in params.yaml (`features`, `validate`; typed and cross-checked in
stages.params) and built here as pandera schemas. The validate stage and the tests both use it."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa

from stages.params import Params, Split

STRUCTURAL_CHECKS = {"column_in_dataframe": "missing_column", "column_in_schema": "unexpected_column"}


def _missing_at_most(limit: float) -> pa.Check:
    return pa.Check(
        lambda series: series.isna().mean() <= limit,
        element_wise=False,
        ignore_na=False,
        name=f"missing_fraction<={limit}",
    )


def _bound(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def split_schema(params: Params, split: Split) -> pa.DataFrameSchema:
    features, rules = params.features, params.validation
    columns: dict[str, pa.Column] = {}
    for name, numeric in features.numeric.items():
        columns[name] = pa.Column(
            numeric.dtype,
            checks=[
                pa.Check.in_range(_bound(numeric.min), _bound(numeric.max)),
                _missing_at_most(numeric.max_missing),
            ],
            nullable=numeric.max_missing > 0,
        )
    for name, categorical in features.categorical.items():
        columns[name] = pa.Column(
            "string",
            checks=[pa.Check.isin(categorical.categories), _missing_at_most(categorical.max_missing)],
            nullable=categorical.max_missing > 0,
        )
    columns[features.target] = pa.Column("string", checks=pa.Check.isin(features.labels))

    positive, bounds, min_rows = features.positive_label, rules.positive_fraction, rules.min_rows[split]
    return pa.DataFrameSchema(
        columns,
        checks=[
            pa.Check(lambda frame: len(frame) >= min_rows, name=f"row_count>={min_rows}"),
            pa.Check(
                lambda frame: bounds.min <= (frame[features.target] == positive).mean() <= bounds.max,
                name=f"positive_fraction_in[{bounds.min},{bounds.max}]",
            ),
        ],
        strict=True,
        ordered=False,
        name=split,
    )


def leaked_rows(splits: dict[Split, pd.DataFrame]) -> pd.DataFrame:
    """Rows that appear, identical in every column, in more than one split."""
    keyed = []
    for name, frame in splits.items():
        hashes = pd.util.hash_pandas_object(frame, index=False)
        keyed.append(pd.DataFrame({"row_hash": hashes.to_numpy(), "split": name}).drop_duplicates())
    combined = pd.concat(keyed, ignore_index=True)
    splits_per_row = combined.groupby("row_hash")["split"].nunique()
    shared = splits_per_row[splits_per_row > 1].index
    return combined[combined["row_hash"].isin(shared)]


def violations(params: Params, splits: dict[Split, pd.DataFrame]) -> list[dict[str, Any]]:
    """Every failed check as {split, check, column, count, examples}; empty when the data is clean."""
    found: list[dict[str, Any]] = []
    for split, frame in splits.items():
        try:
            split_schema(params, split).validate(frame, lazy=True)
        except pa.errors.SchemaErrors as errors:
            cases = errors.failure_cases.copy()
            # Pandera reports a missing or unexpected column against the schema, with the column's name as
            # the failure case; name the column itself so the report reads the same as other checks.
            structural = cases["check"].isin(list(STRUCTURAL_CHECKS))
            cases.loc[structural, "column"] = cases.loc[structural, "failure_case"]
            cases.loc[structural, "check"] = cases.loc[structural, "check"].map(STRUCTURAL_CHECKS)
            grouped = cases.groupby(["check", "column"], dropna=False, sort=True)
            for (check, column), group in grouped:
                examples = (
                    []
                    if check in STRUCTURAL_CHECKS.values()
                    else [str(value) for value in group["failure_case"].dropna().unique()[:5]]
                )
                found.append(
                    {
                        "split": split,
                        "check": str(check),
                        "column": None if pd.isna(column) else str(column),
                        "count": len(group),
                        "examples": examples,
                    }
                )
    leaked = leaked_rows(splits)
    if len(leaked):
        found.append(
            {
                "split": ",".join(sorted(leaked["split"].unique())),
                "check": "no_row_shared_between_splits",
                "column": None,
                "count": int(leaked["row_hash"].nunique()),
                "examples": [],
            }
        )
    return found
