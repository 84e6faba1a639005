"""What a predictor is, and the generic one: the logged pipeline through a DataFrame. The fast one, which
needs no pandas per request, is compiled from the same pipeline by `api.fast`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
import pandas as pd

# A label in the target's own JSON type: text, a whole number (0/1, 1/2) or a boolean.
Label = str | int | bool
Row = Mapping[str, Any]
# A batch by column: feature name -> its values, one per row, in order. This is how a batch arrives from the
# decoder and how both predictors consume it; rows convert with `columns_of`.
ColumnBatch = Mapping[str, Sequence[Any]]
# What a predictor's lookups made of a batch's categorical columns, by feature (FastPredictor.prepare).
Codes = dict[str, np.ndarray]


class Predictor(Protocol):
    kind: str

    def prepare(self, columns: ColumnBatch, codes: Codes | None = None) -> tuple[Any, dict[str, int]]:
        """The model's input for a batch, and how many values per feature the model never saw in training.
        Python work, under the GIL. A predictor that looks each categorical value up may leave what it
        found in `codes` (feature -> an array, one entry per row), for the inference log to reuse."""
        ...

    def score(self, prepared: Any) -> np.ndarray:
        """Positive-class probabilities for what `prepare` made: the model's own work, which may run in a
        worker thread."""
        ...

    def predict_rows(self, rows: Sequence[Row]) -> tuple[np.ndarray, dict[str, int]]:
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


class BatchPredictor:
    """What both predictors share: a batch is prepared, then scored; `names` are its columns."""

    names: tuple[str, ...]

    def prepare(self, columns: ColumnBatch, codes: Codes | None = None) -> tuple[Any, dict[str, int]]:
        raise NotImplementedError

    def score(self, prepared: Any) -> np.ndarray:
        raise NotImplementedError

    def predict_rows(self, rows: Sequence[Row]) -> tuple[np.ndarray, dict[str, int]]:
        prepared, unknown = self.prepare(columns_of(rows, self.names))
        return self.score(prepared), unknown


class GenericPredictor(BatchPredictor):
    """The logged pipeline through a DataFrame: slow, but right for any pipeline."""

    kind = "generic"

    def __init__(self, pipeline: Any, columns: Columns, known: Mapping[str, set[str]], positive_index: int):
        self.pipeline = pipeline
        self.columns = columns
        self.names = columns.order
        self.known = known
        self.positive_index = positive_index  # the predict_proba column of the positive label

    def prepare(
        self, columns: ColumnBatch, codes: Codes | None = None
    ) -> tuple[pd.DataFrame, dict[str, int]]:
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
        probabilities, unknown = self.predict_rows([row])
        return float(probabilities[0]), unknown
