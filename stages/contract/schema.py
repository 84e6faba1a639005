"""The data contract as pandera schemas, one per split, built from params.yaml's `features` and
`validate` (typed and cross-checked in stages.params)."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa

from stages.params import Params, Split

# The target column's type follows its labels' type (params.yaml writes them in that type).
TARGET_DTYPES = {str: "string", int: "int64", bool: "bool"}


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
    columns[features.target] = pa.Column(
        TARGET_DTYPES[type(features.labels[0])], checks=pa.Check.isin(features.labels)
    )

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
