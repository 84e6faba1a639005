"""A first draft of the data contract for a new file: what `make contract` infers, decides and prints.

pandera's `infer_schema` gives the first draft (dtypes, nullability, numeric ranges). The rules here
widen it so that every split of the same file passes, and so that new rows of the same kind pass too:
ranges get a margin, missing fractions a margin, and only columns a model can learn from stay features.
Each decision carries its reason, for the user to review.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from stages.errors import StageError
from stages.params import Label, Read

FREE_TEXT_DISTINCT = 50  # a string column with more distinct values is text, not a category
RANGE_MARGIN = 0.10  # numeric ranges widen by this share of the observed span on each side
MISSING_MARGIN = 1.5  # the allowed missing fraction is the observed one times this, plus a point
COMMON_MISSING_MARKERS = ("?", "NA", "N/A", "n/a", "na", "null", "NULL", "None", "none", "-", "nan", "NaN")
SNIFFED_DELIMITERS = ",;\t| "


@dataclass
class ColumnDecision:
    raw: str
    name: str
    role: str  # numeric, categorical, target, dropped
    reason: str
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass
class Draft:
    read: Read
    target: str
    labels: list[Label]
    positive_label: Label
    numeric: dict[str, dict[str, Any]]
    categorical: dict[str, dict[str, Any]]
    drop_columns: list[str]
    decisions: list[ColumnDecision]
    positive_fraction: float
    rows: int
    review: list[str]


def sniff_read(file: Path, delimiter: str | None, header: bool | None) -> tuple[Read, list[str]]:
    """How to read a delimited file: the delimiter and whether the first line is a header (sniffed
    unless given), whether its first column is a row index, and the markers that mean missing."""
    notes: list[str] = []
    if file.name.endswith(".parquet"):
        return Read(), notes
    opener = __import__("gzip").open if file.name.endswith(".gz") else open
    with opener(file, "rt", newline="") as handle:
        sample = handle.read(1 << 16)
    sniffer = csv.Sniffer()
    if delimiter is None:
        if ".tsv" in file.suffixes:
            delimiter = "\t"
        else:
            try:
                delimiter = sniffer.sniff(sample, delimiters=SNIFFED_DELIMITERS).delimiter
            except csv.Error:
                delimiter = ","
            notes.append(f"delimiter {delimiter!r} (sniffed; SEP= overrides)")
    if header is None:
        try:
            header = sniffer.has_header(sample)
        except csv.Error:
            header = True
        notes.append(f"header: {'yes' if header else 'no'} (sniffed; HEADER=yes|no overrides)")
    first = next(csv.reader(sample.splitlines()[:1], delimiter=delimiter), [])
    index_column = 0 if header and first and first[0].strip() == "" else None
    if index_column is not None:
        notes.append("the first column has no name: read as a row index, not a feature")
    preview = pd.read_csv(
        file, sep=delimiter, header=0 if header else None, index_col=index_column, dtype=str,
        keep_default_na=False, skipinitialspace=True, nrows=20_000,
    )  # fmt: skip
    seen = {value.strip() for column in preview.columns for value in preview[column].unique()}
    markers = [marker for marker in COMMON_MISSING_MARKERS if marker in seen]
    if markers:
        notes.append(f"missing-value markers {markers}: review them, a marker can also be a real value")
    return Read(delimiter=delimiter, header=header, index_column=index_column, missing_markers=markers), notes


def label_in_type(text: str, labels: list[Label]) -> Label:
    """POSITIVE as the target's own type: `2` is the integer 2 for an integer target, `true` the boolean."""
    kind = type(labels[0])
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise StageError(f"POSITIVE={text} is not a boolean; the target's values are {labels}")
        value: Label = lowered == "true"
    elif kind is int:
        try:
            value = int(text)
        except ValueError:
            raise StageError(f"POSITIVE={text} is not an integer; the target's values are {labels}") from None
    else:
        value = text
    if value not in labels:
        raise StageError(f"POSITIVE={text} is not a value of the target; its values are {labels}")
    return value


def target_labels(series: pd.Series, name: str) -> list[Label]:
    values = series.dropna().unique().tolist()
    if series.isna().any():
        raise StageError(f"the target {name} has {int(series.isna().sum())} missing values; drop those rows")
    if len(values) != 2:
        kind = "a numeric target" if pd.api.types.is_float_dtype(series) else f"{len(values)} values"
        raise StageError(
            f"the target {name} has {kind} ({sorted(map(str, values))[:8]}...): only a binary target is "
            "served (two labels)"
        )
    labels = [_plain(value) for value in sorted(values, key=str)]
    return labels


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _widened(low: float, high: float, integer: bool) -> tuple[float, float]:
    span = high - low
    margin = span * RANGE_MARGIN if span else max(abs(high) * RANGE_MARGIN, 1.0)
    lower, upper = low - margin, high + margin
    if low >= 0:
        lower = max(lower, 0.0)  # a quantity that is never negative stays so
    if integer:
        lower, upper = math.floor(lower), math.ceil(upper)
    else:
        lower, upper = float(f"{lower:.6g}"), float(f"{upper:.6g}")
    return lower, upper


def _missing_allowance(fraction: float) -> float:
    return 0.0 if fraction == 0 else min(1.0, math.ceil((fraction * MISSING_MARGIN + 0.01) * 100) / 100)


# A date or a timestamp spelled with digits: 2024-01-31, 31/01/2024, 2024-01-31T10:00. Words such as
# "10th" or "May" are categories here: dateutil would read them as dates too.
DATE_LIKE = (
    r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2})?.*)?$|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}$"
)


def _looks_like_dates(text: pd.Series) -> bool:
    sample = text.head(500)
    if not sample.str.fullmatch(DATE_LIKE).mean() > 0.95:
        return False
    return bool(pd.to_datetime(sample, errors="coerce", format="mixed").notna().mean() > 0.95)


def decide_column(raw: str, name: str, series: pd.Series, column: pa.Column, rows: int) -> ColumnDecision:
    present = series.dropna()
    distinct = int(present.nunique())
    missing = float(series.isna().mean())
    if distinct <= 1:
        return ColumnDecision(raw, name, "dropped", f"constant ({distinct} distinct value)")
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if not numeric and _looks_like_dates(present.astype(str)):
        return ColumnDecision(raw, name, "dropped", "date/time")
    # Every row its own value: an identifier (whole numbers, or tokens without spaces), not a feature.
    tokens = not numeric and not present.astype(str).str.contains(r"\s").any()
    if distinct == rows and ((numeric and bool((present % 1 == 0).all())) or tokens):
        return ColumnDecision(raw, name, "dropped", "id-like: every row has its own value")
    if numeric:
        integer = bool((present % 1 == 0).all())
        observed = column.checks  # pandera's in_range draft: the observed minimum and maximum
        bounds = {check.name: check.statistics for check in observed}
        low = bounds.get("greater_than_or_equal_to", {}).get("min_value", present.min())
        high = bounds.get("less_than_or_equal_to", {}).get("max_value", present.max())
        lower, upper = _widened(float(low), float(high), integer)
        spec: dict[str, Any] = {
            "dtype": "int64" if integer and missing == 0 else "float64",
            "min": int(lower) if integer else lower,
            "max": int(upper) if integer else upper,
        }
        if missing:
            spec["max_missing"] = _missing_allowance(missing)
        reason = (
            f"{'whole' if integer else 'real'} numbers {low:g}…{high:g}, allowed {spec['min']}…{spec['max']}"
        )
        if integer and missing:
            reason += "; float64 because some values are missing"
        return ColumnDecision(raw, name, "numeric", reason, spec)
    text = present.astype(str)
    if distinct > FREE_TEXT_DISTINCT:
        return ColumnDecision(raw, name, "dropped", f"free text ({distinct} distinct values)")
    categories = sorted(text.unique().tolist())
    spec = {"categories": categories}
    if missing:
        spec["max_missing"] = _missing_allowance(missing)
    return ColumnDecision(raw, name, "categorical", f"{distinct} categories", spec)


def draft_contract(
    frame: pd.DataFrame, raw_names: list[str], read: Read, target: str, positive: str
) -> Draft:
    """The contract for a frame read the way prepare reads it (names already made identifiers)."""
    from stages.prepare import column_name

    target_name = column_name(target)
    if target_name not in frame.columns:
        raise StageError(f"TARGET={target}: no such column; the columns are {raw_names}")
    labels = target_labels(frame[target_name], target)
    positive_label = label_in_type(positive, labels)
    schema = pa.infer_schema(frame)
    assert isinstance(schema, pa.DataFrameSchema)  # a DataFrame gives a DataFrameSchema
    decisions, numeric, categorical, dropped = [], {}, {}, []
    for raw, name in zip(raw_names, frame.columns, strict=True):
        if name == target_name:
            decisions.append(
                ColumnDecision(raw, name, "target", f"labels {labels}, positive {positive_label!r}")
            )
            continue
        decision = decide_column(raw, name, frame[name], schema.columns[name], len(frame))
        decisions.append(decision)
        if decision.role == "numeric":
            numeric[name] = decision.spec
        elif decision.role == "categorical":
            categorical[name] = decision.spec
        else:
            dropped.append(name)
    if not numeric and not categorical:
        raise StageError("no column is left to learn from: every one was dropped (see above)")
    review = [
        "the allowed ranges and categories: new rows outside them will be refused (422 and validate)",
        "the missing-value markers and the dropped columns",
    ]
    return Draft(
        read=read,
        target=target_name,
        labels=labels,
        positive_label=positive_label,
        numeric=numeric,
        categorical=categorical,
        drop_columns=dropped,
        decisions=decisions,
        positive_fraction=float((frame[target_name] == positive_label).mean()),
        rows=len(frame),
        review=review,
    )
