"""What the contract found, as messages a user can act on: the split, the check and the column, the
observed value next to the allowed one, and the fix where there is a known one. One cause gives one
message: an int64 column with missing values fails pandera's dtype, nullability and missing-fraction
checks at once, and is reported once, as what it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import pandera.pandas as pa

from stages.contract.schema import leaked_rows, split_schema
from stages.params import Params, Split

MISSING_COLUMN, UNEXPECTED_COLUMN = "missing_column", "unexpected_column"
STRUCTURAL_CHECKS = {"column_in_dataframe": MISSING_COLUMN, "column_in_schema": UNEXPECTED_COLUMN}
INTEGER_WITH_MISSING = "integer_with_missing_values"


@dataclass
class Violation:
    split: str
    check: str
    column: str | None
    count: int
    examples: list[str] = field(default_factory=list)
    observed: str | None = None
    allowed: str | None = None
    hint: str | None = None

    def line(self) -> str:
        where = f"column '{self.column}'" if self.column else "table"
        text = f"[{self.split}] {self.check} on {where}: {self.count} failing"
        if self.examples:
            text += f" e.g. {', '.join(self.examples)}"
        if self.observed is not None:
            text += f"; {self.observed} observed, {self.allowed} allowed"
        return text + (f". {self.hint}" if self.hint else "")


def _fraction(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


def _where(params: Params, column: str) -> str:
    """The params.yaml key that declares a column."""
    features = params.features
    if column in features.numeric:
        return f"features.numeric.{column}"
    if column in features.categorical:
        return f"features.categorical.{column}"
    return "features.target" if column == features.target else f"features ({column})"


def _explain(
    params: Params, split: Split, frame: pd.DataFrame, check: str, column: str | None
) -> dict[str, Any]:
    """observed, allowed and hint for one failed check."""
    features, rules = params.features, params.validation
    series = frame[column] if column is not None and column in frame.columns else None
    if check == MISSING_COLUMN:
        return {"hint": f"Add the column to the file, or remove it from {_where(params, str(column))}"}
    if check == UNEXPECTED_COLUMN:
        return {"hint": "Declare it under features, or list it in data.drop_columns"}
    if check.startswith("missing_fraction") and series is not None and column is not None:
        limit = (features.numeric.get(column) or features.categorical[column]).max_missing
        return {
            "observed": _fraction(float(series.isna().mean())),
            "allowed": _fraction(limit),
            "hint": f"Raise {_where(params, column)}.max_missing, or clean the data",
        }
    if check.startswith("in_range") and series is not None and column is not None:
        spec = features.numeric[column]
        values = pd.to_numeric(series, errors="coerce")
        return {
            "observed": f"{values.min():g}…{values.max():g}",
            "allowed": f"{spec.min:g}…{spec.max:g}",
            "hint": f"Widen {_where(params, column)} min/max, or clean the data",
        }
    if check.startswith("isin") and column is not None:
        if column == features.target:
            return {"hint": f"The labels are {features.labels}: fix the file, or features.labels"}
        return {"hint": f"Add the values to {_where(params, column)}.categories, or clean the data"}
    if check.startswith("dtype") and series is not None and column is not None:
        return {"observed": str(series.dtype), "allowed": check.removeprefix("dtype(").rstrip(")").strip("'")}
    if check.startswith("row_count"):
        return {
            "observed": str(len(frame)),
            "allowed": f">= {rules.min_rows[split]}",
            "hint": f"Bring more rows, or lower validate.min_rows.{split}",
        }
    if check.startswith("positive_fraction") and features.target in frame.columns:
        observed = (frame[features.target] == features.positive_label).mean() if len(frame) else float("nan")
        band = rules.positive_fraction
        return {
            "observed": _fraction(float(observed)),
            "allowed": f"{band.min:g}…{band.max:g}",
            "hint": "Check features.positive_label, or widen validate.positive_fraction",
        }
    return {}


def _integer_with_missing(params: Params, split: Split, frame: pd.DataFrame, column: str) -> Violation | None:
    """An int64 column of the contract that arrived as floats only because some values are missing."""
    spec = params.features.numeric.get(column)
    if spec is None or spec.dtype != "int64" or column not in frame.columns:
        return None
    series = frame[column]
    present = series.dropna()
    if not series.isna().any() or not pd.api.types.is_float_dtype(series) or not (present % 1 == 0).all():
        return None
    where = _where(params, column)
    return Violation(
        split,
        INTEGER_WITH_MISSING,
        column,
        int(series.isna().sum()),
        observed=_fraction(float(series.isna().mean())),
        allowed="0",
        hint=f"An integer column cannot hold missing values: declare {where} with dtype: float64 and a "
        "max_missing",
    )


def split_violations(params: Params, split: Split, frame: pd.DataFrame) -> list[Violation]:
    try:
        split_schema(params, split).validate(frame, lazy=True)
        return []
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.copy()
    # Pandera reports a missing or unexpected column against the schema, with the column's name as the
    # failure case; name the column itself so the report reads the same as other checks.
    structural = cases["check"].isin(list(STRUCTURAL_CHECKS))
    # Table-wide checks (row count, class balance) carry the schema's name, the split, as their column.
    cases.loc[(cases["schema_context"] == "DataFrameSchema") & ~structural, "column"] = None
    cases.loc[structural, "column"] = cases.loc[structural, "failure_case"]
    cases.loc[structural, "check"] = cases.loc[structural, "check"].map(STRUCTURAL_CHECKS)
    found: list[Violation] = []
    explained: set[str] = set()  # columns whose one cause is already reported
    for column in sorted(cases["column"].dropna().unique()):
        special = _integer_with_missing(params, split, frame, str(column))
        if special is not None:
            found.append(special)
            explained.add(str(column))
    grouped = cases.groupby(["check", "column"], dropna=False, sort=True)
    missing_reported: set[str] = set()
    for (check, column), group in grouped:
        name = None if pd.isna(column) else str(column)
        check = str(check)
        if name in explained:
            continue
        if check == "not_nullable" or check.startswith("missing_fraction"):
            # Missing values beyond the allowed fraction: one message, whichever checks saw them.
            if name in missing_reported or name is None:
                continue
            missing_reported.add(name)
            limit = params.features.numeric.get(name) or params.features.categorical.get(name)
            check = f"missing_fraction<={limit.max_missing if limit else 0}"
            count = int(frame[name].isna().sum()) if name in frame.columns else len(group)
            found.append(Violation(split, check, name, count, **_explain(params, split, frame, check, name)))
            continue
        examples = (
            []
            if check in STRUCTURAL_CHECKS.values() or check.startswith(("row_count", "positive_fraction"))
            else [str(value) for value in group["failure_case"].dropna().unique()[:5]]
        )
        found.append(
            Violation(split, check, name, len(group), examples, **_explain(params, split, frame, check, name))
        )
    return found


def violations(params: Params, splits: dict[Split, pd.DataFrame]) -> list[dict[str, Any]]:
    """Every failed check, as the report's records; empty when the data is clean."""
    found = [item for split, frame in splits.items() for item in split_violations(params, split, frame)]
    leaked = leaked_rows(splits)
    if len(leaked):
        found.append(
            Violation(
                ",".join(sorted(leaked["split"].unique())),
                "no_row_shared_between_splits",
                None,
                int(leaked["row_hash"].nunique()),
                hint="The same row is in two splits: deduplicate the file (prepare splits distinct rows)",
            )
        )
    return [asdict(item) for item in found]


def render(found: list[dict[str, Any]]) -> str:
    lines = [f"{len(found)} check(s) failed:"]
    lines.extend(f"  - {Violation(**item).line()}" for item in found)
    return "\n".join(lines)
