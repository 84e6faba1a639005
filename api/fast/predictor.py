"""The compiled pipeline as a predictor: `prepare` encodes a ColumnBatch into the float64 matrix the
classifier takes with numpy, and `predict_one` encodes one validated record with plain Python (on that path
each numpy call on a one-element array costs more than the arithmetic it does)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from api.predictor import BatchPredictor, Codes, ColumnBatch, Row, batch_size

# Positions in the one-hot lookups that set no column: a category never seen in training (counted), and a
# missing value whose imputed fill was never seen either (not an unknown category).
UNKNOWN, NO_COLUMN = -1, -2


class UnsupportedPipeline(Exception):
    """The pipeline's shape, or the spec read from it, is not one the fast path can replay exactly."""


@dataclass(frozen=True)
class Scorer:
    """The classifier as functions of encoded inputs, both giving P(classes_[1])."""

    kind: str
    matrix: Callable[[np.ndarray], np.ndarray]  # float64 (n, width) -> (n,)
    row: Callable[[np.ndarray], float]  # float64 (width,): the hot path of a one-record request
    # The batch sizes at which `matrix` changes route: up to batch_limits[0] rows take the first route, up
    # to batch_limits[1] the second, and so on; more than the last limit, the last route. () is one route.
    batch_limits: tuple[int, ...] = ()


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
    """The compiled pipeline. `predict_one` takes a validated record (a dict keyed by feature name)."""

    def __init__(
        self,
        width: int,
        numeric: list[NumericColumn],
        categorical: list[CategoricalColumn],
        scorer: Scorer,
        flip: bool,
    ):
        self.kind = scorer.kind
        self.width = width
        self.batch_limits = scorer.batch_limits
        self._numeric = tuple((c.name, c.position, c.fill, c.mean, c.scale) for c in numeric)
        self._numeric_names = tuple(c.name for c in numeric)
        self._numeric_positions = np.array([c.position for c in numeric], dtype=np.intp)
        self._numeric_fill = np.array([c.fill for c in numeric], dtype=np.float64)
        self._numeric_mean = np.array([c.mean for c in numeric], dtype=np.float64)
        self._numeric_scale = np.array([c.scale for c in numeric], dtype=np.float64)
        self.names = (*self._numeric_names, *(c.name for c in categorical))
        self._zeros = np.zeros(width, dtype=np.float64)
        # category -> output column, with None (missing) already mapped the way the imputer fills it.
        self._categorical = tuple((c.name, _with_missing(c)) for c in categorical)
        self._score = scorer.matrix
        self._score_one = scorer.row
        self._flip = flip  # the positive class is classes_[0]

    @property
    def one_hot_positions(self) -> tuple[tuple[str, dict[Any, int]], ...]:
        """Each categorical feature's category -> its one-hot column in `prepare`'s matrix, with None
        (missing) -> the imputer's fill column, or NO_COLUMN. Drift monitoring counts a batch's categories
        off the matrix with these instead of looking every value up a second time."""
        return self._categorical

    def prepare(self, columns: ColumnBatch, codes: Codes | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """The encoded float64 matrix (n, width). With `codes`, each categorical feature's one-hot column
        per row (or UNKNOWN, NO_COLUMN) is left there: the inference log writes the values from them
        (`one_hot_positions` says which column is which category) without converting every string."""
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
            if codes is not None:
                codes[name] = positions
            hit = positions >= 0
            matrix[row_index[hit], positions[hit]] = 1.0
        return matrix, unknown

    def _encode_one(self, row: Row) -> tuple[np.ndarray, dict[str, int]]:
        # A copy of zeros, then a dozen items set: 0.5 µs, where a list of `width` floats and np.array of
        # it took 2.2 (its every item inspected for a dtype). The same float64 values either way.
        vector = self._zeros.copy()
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
        return vector, unknown

    def predict_one(self, row: Row) -> tuple[float, dict[str, int]]:
        encoded, unknown = self._encode_one(row)
        probability = self._score_one(encoded)
        return (1.0 - probability if self._flip else probability), unknown

    def score(self, prepared: np.ndarray) -> np.ndarray:
        probabilities = np.asarray(self._score(prepared), dtype=np.float64)
        return 1.0 - probabilities if self._flip else probabilities
