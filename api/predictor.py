"""The two predictors: the generic one (the logged pipeline through a DataFrame) and the fast one that
`api.compiler` builds from it, which needs no pandas per request."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
import pandas as pd

Row = Mapping[str, Any]
# A batch by column: feature name -> its values, one per row, in order. This is how a batch arrives from the
# decoder and how both predictors consume it; rows convert with `columns_of`.
ColumnBatch = Mapping[str, Sequence[Any]]
# Positions in the one-hot lookups that set no column: a category never seen in training (counted), and a
# missing value whose imputed fill was never seen either (not an unknown category).
UNKNOWN, NO_COLUMN = -1, -2


class UnsupportedPipeline(Exception):
    """The pipeline's shape is not one the fast path can replay exactly."""


class Predictor(Protocol):
    kind: str

    def prepare(self, columns: ColumnBatch) -> tuple[Any, dict[str, int]]:
        """The model's input for a batch, and how many values per feature the model never saw in training.
        Python work, under the GIL."""
        ...

    def score(self, prepared: Any) -> np.ndarray:
        """Positive-class probabilities for what `prepare` made: the model's own work, which may run in a
        worker thread."""
        ...

    def predict(self, rows: Sequence[Row]) -> tuple[np.ndarray, dict[str, int]]:
        """`prepare` then `score`, for rows."""
        ...

    def predict_one(self, row: Row) -> tuple[float, dict[str, int]]:
        """The same for one record."""
        ...


@dataclass(frozen=True)
class Columns:
    """The model's input columns, in the signature's order, split the way the model treats them."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def order(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)


def columns_of(
    rows: Sequence[Any], names: Sequence[str], getter: Callable[[str], Any] = itemgetter
) -> dict[str, list[Any]]:
    """A ColumnBatch from rows: dicts by default, or objects with the features as attributes
    (`getter=attrgetter`), such as decoded or validated records."""
    return {name: list(map(getter(name), rows)) for name in names}


def batch_size(columns: ColumnBatch) -> int:
    return len(next(iter(columns.values()), ()))


def to_frame(batch: ColumnBatch, columns: Columns) -> pd.DataFrame:
    """What the logged pipeline was trained on: float64 numerics, object categoricals, NaN for missing."""
    data: dict[str, Any] = {}
    for name in columns.numeric:
        data[name] = np.array(batch[name], dtype=np.float64)  # None becomes NaN
    for name in columns.categorical:
        data[name] = np.array([np.nan if value is None else value for value in batch[name]], dtype=object)
    return pd.DataFrame(data, columns=list(columns.order))


def positive_class_index(classes: Sequence[Any], positive_label: str) -> int:
    """Which predict_proba column is the positive class: labels are stored as 0/1 or as the label text."""
    classes = list(classes)
    if positive_label in classes:
        return classes.index(positive_label)
    if 1 in classes:
        return classes.index(1)
    raise UnsupportedPipeline(f"neither {positive_label!r} nor 1 is among the classes {classes}")


class BatchPredictor:
    """What both predictors share: a batch is prepared, then scored; `names` are its columns."""

    names: tuple[str, ...]

    def prepare(self, columns: ColumnBatch) -> tuple[Any, dict[str, int]]:
        raise NotImplementedError

    def score(self, prepared: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, rows: Sequence[Row]) -> tuple[np.ndarray, dict[str, int]]:
        prepared, unknown = self.prepare(columns_of(rows, self.names))
        return self.score(prepared), unknown


class GenericPredictor(BatchPredictor):
    """The logged pipeline through a DataFrame: slow, but right for any pipeline."""

    kind = "generic"

    def __init__(self, pipeline: Any, columns: Columns, known: Mapping[str, set[str]], positive_label: str):
        self.pipeline = pipeline
        self.columns = columns
        self.names = columns.order
        self.known = known
        self.positive_index = positive_class_index(pipeline.classes_, positive_label)

    def prepare(self, columns: ColumnBatch) -> tuple[pd.DataFrame, dict[str, int]]:
        unknown: dict[str, int] = {}
        for name in self.columns.categorical:
            seen = self.known[name]
            count = sum(1 for value in columns[name] if value is not None and value not in seen)
            if count:
                unknown[name] = count
        return to_frame(columns, self.columns), unknown

    def score(self, prepared: pd.DataFrame) -> np.ndarray:
        probabilities = self.pipeline.predict_proba(prepared)[:, self.positive_index]
        return np.asarray(probabilities, dtype=np.float64)

    def predict_one(self, row: Row) -> tuple[float, dict[str, int]]:
        probabilities, unknown = self.predict([row])
        return float(probabilities[0]), unknown


@dataclass(frozen=True)
class NumericColumn:
    name: str
    position: int
    fill: float  # the imputer's statistic; NaN inputs become this
    mean: float
    scale: float


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    fill: Any  # what the imputer writes for a missing value
    positions: dict[Any, int]  # category -> output column of its one-hot 1.0


def _with_missing(column: CategoricalColumn) -> dict[Any, int]:
    """The column's category -> position map, plus None: where the imputer's fill value goes, or nowhere
    (all zeros, like OneHotEncoder(handle_unknown="ignore")) when training never saw that fill value."""
    lookup = dict(column.positions)
    lookup[None] = lookup.get(column.fill, NO_COLUMN)
    return lookup


class FastPredictor(BatchPredictor):
    """The compiled pipeline: `prepare` encodes a ColumnBatch into the float64 matrix the classifier takes,
    `predict_one` encodes one validated record (a dict keyed by feature name) with plain Python."""

    def __init__(
        self,
        kind: str,
        width: int,
        numeric: list[NumericColumn],
        categorical: list[CategoricalColumn],
        score: Any,
        score_one: Any,
        flip: bool,
    ):
        self.kind = kind
        self.width = width
        self._numeric = tuple((c.name, c.position, c.fill, c.mean, c.scale) for c in numeric)
        self._numeric_names = tuple(c.name for c in numeric)
        self._numeric_positions = np.array([c.position for c in numeric], dtype=np.intp)
        self._numeric_fill = np.array([c.fill for c in numeric], dtype=np.float64)
        self._numeric_mean = np.array([c.mean for c in numeric], dtype=np.float64)
        self._numeric_scale = np.array([c.scale for c in numeric], dtype=np.float64)
        self.names = (*self._numeric_names, *(c.name for c in categorical))
        # category -> output column, with None (missing) already mapped the way the imputer fills it.
        self._categorical = tuple((c.name, _with_missing(c)) for c in categorical)
        self._score = score  # float64 matrix (n, width) -> probability of classes_[1], shape (n,)
        self._score_one = score_one  # float64 row (width,) -> probability of classes_[1]
        self._flip = flip  # the positive class is classes_[0]

    def prepare(self, columns: ColumnBatch) -> tuple[np.ndarray, dict[str, int]]:
        """The encoded float64 matrix (n, width)."""
        n = batch_size(columns)
        matrix = np.zeros((n, self.width), dtype=np.float64)
        if self._numeric:
            # np.array turns None into NaN, which the imputer's statistic then replaces.
            values = np.column_stack(
                [np.array(columns[name], dtype=np.float64) for name in self._numeric_names]
            )
            values = np.where(np.isnan(values), self._numeric_fill, values)
            # The same two in-place float64 operations as StandardScaler.transform, so results match bitwise.
            values -= self._numeric_mean
            values /= self._numeric_scale
            matrix[:, self._numeric_positions] = values
        unknown: dict[str, int] = {}
        row_index = np.arange(n)
        for name, lookup in self._categorical:
            found = list(map(lookup.get, columns[name], repeat(UNKNOWN, n)))
            misses = found.count(UNKNOWN)
            if misses:
                unknown[name] = misses
            positions = np.array(found, dtype=np.intp)
            hit = positions >= 0
            matrix[row_index[hit], positions[hit]] = 1.0
        return matrix, unknown

    def _encode_one(self, row: Row) -> tuple[np.ndarray, dict[str, int]]:
        vector = [0.0] * self.width
        for name, position, fill, mean, scale in self._numeric:
            value = row[name]
            if value is None or math.isnan(value):
                value = fill
            vector[position] = (float(value) - mean) / scale
        unknown: dict[str, int] = {}
        for name, lookup in self._categorical:
            value = row[name]
            position = lookup.get(value, UNKNOWN)
            if position >= 0:
                vector[position] = 1.0
            elif position == UNKNOWN:
                unknown[name] = 1
        return np.array(vector, dtype=np.float64), unknown

    def predict_one(self, row: Row) -> tuple[float, dict[str, int]]:
        encoded, unknown = self._encode_one(row)
        probability = self._score_one(encoded)
        return (1.0 - probability if self._flip else probability), unknown

    def score(self, prepared: np.ndarray) -> np.ndarray:
        probabilities = np.asarray(self._score(prepared), dtype=np.float64)
        return 1.0 - probabilities if self._flip else probabilities
