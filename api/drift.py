"""Drift: the Population Stability Index of each feature and of the predicted probability, against the
distribution the model learned from. The one home of the computation: the service counts live rows into
a sliding window with it, and `evaluate` runs it on the test split against train.

The reference bins come from the model's `feature_metadata`, fixed when the model loads:
- numeric: the training deciles (`histogram.edges`), plus a bin for missing values;
- categorical: each category with at least 1% of training rows, one bin that the rarer ones share, one
  for values training never saw, and one for missing values;
- the predicted probability: 10 equal bins, against its distribution on rows the model did not train on.

The request path only counts: one bin index per feature and row, added into preallocated integer arrays,
in one vectorised step per batch, and with plain Python for one record (a numpy call on a one-element
array costs more than the counting it does). The PSI itself is computed in the background.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise, repeat
from typing import Any

import numpy as np

# Reference and live proportions are floored at this, so that an empty bin gives a large PSI, not an
# infinite one: an empty bin whose reference holds 10% contributes 0.1 * ln(0.1 / 1e-4) = 0.69.
PROPORTION_FLOOR = 1e-4
# Categories below this share of training rows share one bin: alone, a handful of rows would swing it.
RARE_SHARE = 0.01
PROBABILITY_BINS = 10
PREDICTION = "prediction"
# How the fast predictor's one-hot matrix holds a missing value (DriftMonitor.read_one_hot).
FILL_COLUMN_OF_ITS_OWN, NO_FILL_COLUMN, FILL_IS_A_CATEGORY = 0, 1, 2


@dataclass(frozen=True)
class NumericBins:
    """Bins [e0, e1), [e1, e2), ... [e(k-1), ek] of the training deciles (as np.histogram counts them; a
    live value beyond the training range falls in the first or last bin), then missing."""

    name: str
    inner: tuple[float, ...]  # e1 ... e(k-1): a value's bin is how many of them it is not below
    reference: np.ndarray

    @property
    def size(self) -> int:
        return len(self.inner) + 2

    def labels(self) -> list[str]:
        bounds = ["-inf", *map(str, self.inner), "inf"]
        return [f"[{low}, {high})" for low, high in pairwise(bounds)] + ["missing"]

    def index_many(self, values: Sequence[Any]) -> np.ndarray:
        # None becomes NaN, and numpy sorts NaN after +inf: the last edge, +inf, keeps every finite value
        # out of the missing bin, which NaN alone lands in.
        edges = np.array([*self.inner, math.inf])
        return np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")


@dataclass(frozen=True)
class CategoricalBins:
    """One bin per common category, then rare (seen in training, under RARE_SHARE), unseen, missing."""

    name: str
    common: tuple[str, ...]
    rare: frozenset[str]
    reference: np.ndarray

    @property
    def size(self) -> int:
        return len(self.common) + 3

    @property
    def rare_bin(self) -> int:
        return len(self.common)

    @property
    def unseen_bin(self) -> int:
        return len(self.common) + 1

    @property
    def missing_bin(self) -> int:
        return len(self.common) + 2

    def labels(self) -> list[str]:
        return [*self.common, "rare", "unseen", "missing"]

    def lookup(self, offset: int = 0) -> dict[Any, int]:
        """Value -> bin (+ offset); a value missing from it is unseen."""
        table: dict[Any, int] = {category: offset + index for index, category in enumerate(self.common)}
        table.update(dict.fromkeys(self.rare, offset + self.rare_bin))
        table[None] = offset + self.missing_bin
        return table

    def index_many(self, values: Sequence[Any]) -> np.ndarray:
        table = self.lookup()
        return np.fromiter(map(table.get, values, repeat(self.unseen_bin)), dtype=np.intp, count=len(values))


Bins = NumericBins | CategoricalBins


def floored(proportions: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(proportions, dtype=np.float64), PROPORTION_FLOOR)


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population Stability Index: sum over bins of (live - reference) * ln(live / reference), both as
    proportions (live may be counts: it is normalised here), each floored at PROPORTION_FLOOR."""
    live = np.asarray(live, dtype=np.float64)
    total = live.sum()
    if total <= 0:
        raise ValueError("no live rows: the PSI is undefined")
    expected, actual = floored(reference), floored(live / total)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def numeric_bins(name: str, metadata: Mapping[str, Any]) -> NumericBins:
    histogram = metadata["histogram"]
    edges = [float(edge) for edge in histogram["edges"]]
    fractions = np.asarray(histogram["fractions"], dtype=np.float64)
    if len(edges) < 2 or len(fractions) != len(edges) - 1:
        raise ValueError(f"{name}: histogram needs k + 1 edges for k fractions")
    missing = float(metadata.get("missing_fraction", 0.0))
    present = fractions / fractions.sum() * (1.0 - missing) if fractions.sum() > 0 else fractions
    return NumericBins(name, tuple(edges[1:-1]), np.append(present, missing))


def categorical_bins(name: str, metadata: Mapping[str, Any]) -> CategoricalBins:
    missing = float(metadata.get("missing_fraction", 0.0))
    # Frequencies are shares of the non-missing training rows; RARE_SHARE is of all of them.
    shares = {str(key): float(value) * (1.0 - missing) for key, value in metadata["frequencies"].items()}
    common = tuple(category for category, share in shares.items() if share >= RARE_SHARE)
    rare = frozenset(category for category, share in shares.items() if share < RARE_SHARE)
    reference = [shares[category] for category in common]
    reference += [sum(shares[category] for category in rare), 0.0, missing]
    return CategoricalBins(name, common, rare, np.asarray(reference, dtype=np.float64))


def feature_bins(feature_metadata: Mapping[str, Any]) -> list[Bins]:
    """Every feature's bins, in the model's feature order."""
    numeric, categorical = feature_metadata["numeric"], feature_metadata["categorical"]
    order = feature_metadata.get("feature_order") or [*numeric, *categorical]
    return [
        numeric_bins(name, numeric[name]) if name in numeric else categorical_bins(name, categorical[name])
        for name in order
    ]


def probability_index(probabilities: np.ndarray) -> np.ndarray:
    """The bin of each probability among PROBABILITY_BINS equal ones; 1.0 is in the last."""
    scaled = (np.asarray(probabilities, dtype=np.float64) * PROBABILITY_BINS).astype(np.intp)
    return np.clip(scaled, 0, PROBABILITY_BINS - 1)


def probability_labels() -> list[str]:
    """Each probability bin's label: [0.0, 0.1) ... [0.9, 1.0]."""
    edges = [round(index / PROBABILITY_BINS, 6) for index in range(PROBABILITY_BINS + 1)]
    return [f"[{low}, {high}{']' if high == 1 else ')'}" for low, high in pairwise(edges)]


def probability_proportions(probabilities: np.ndarray) -> list[float]:
    """The predicted probabilities' distribution over the PROBABILITY_BINS bins: the prediction reference."""
    counts = np.bincount(probability_index(probabilities), minlength=PROBABILITY_BINS)
    return [float(value) for value in counts / max(counts.sum(), 1)]


def feature_psi(
    feature_metadata: Mapping[str, Any], columns: Mapping[str, Sequence[Any]]
) -> dict[str, float]:
    """Each feature's PSI of these rows (by column, None or NaN for missing) against the training
    distribution: what evaluate reports for the test split."""
    found = {}
    for bins in feature_bins(feature_metadata):
        values = [None if _missing(value) else value for value in columns[bins.name]]
        found[bins.name] = psi(bins.reference, np.bincount(bins.index_many(values), minlength=bins.size))
    return found


def _count_missing(values: Sequence[Any]) -> int:
    return (values if isinstance(values, list) else list(values)).count(None)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class DriftMonitor:
    """Live counts in a sliding window of about `window_rows` rows, kept in `buckets` time-ordered
    sub-windows: when the current one is full, the oldest is emptied and counting moves into it.

    Every quantity's bins sit side by side in one flat count array per sub-window, so that a batch is
    counted with one bincount. Single records add into a plain list instead (a numpy item assignment
    costs ten times a list's); it joins the array when the sub-window is left or the window is read.
    Not thread-safe: counting and reading happen on the event loop."""

    def __init__(
        self, bins: Sequence[Bins], prediction_reference: np.ndarray | None, window_rows: int, buckets: int
    ):
        self.bins = tuple(bins)
        self.prediction_reference = prediction_reference
        self.offsets: list[int] = []
        offset = 0
        for item in self.bins:
            self.offsets.append(offset)
            offset += item.size
        self._prediction_offset = offset
        self.width = offset + PROBABILITY_BINS
        self.buckets = buckets
        self.capacity = max(1, math.ceil(window_rows / buckets))
        self._counts = np.zeros((buckets, self.width), dtype=np.int64)
        # Every row counted since the last `drain`: the counts this worker adds to the Prometheus counters
        # that recording rules sum over every worker and pod (a PSI per worker cannot be combined).
        self._undrained = np.zeros(self.width, dtype=np.int64)
        self._rows = [0] * buckets
        self._current = 0
        self._single = [0] * self.width
        # The single-record path's plan, resolved once: (name, inner edges, offset) per numeric feature,
        # (name, lookup with offsets, unseen index) per categorical one.
        self._numeric_plan = tuple(
            (item.name, list(item.inner), start)
            for item, start in zip(self.bins, self.offsets, strict=True)
            if isinstance(item, NumericBins)
        )
        self._categorical_plan = tuple(
            (item.name, item.lookup(start), start + item.unseen_bin)
            for item, start in zip(self.bins, self.offsets, strict=True)
            if isinstance(item, CategoricalBins)
        )
        self._one_hot: tuple[np.ndarray, tuple[tuple[str, int, int, int, int, int, int], ...]] | None = None
        self._numeric_batch = tuple(
            (name, np.array([*inner, math.inf]), offset) for name, inner, offset in self._numeric_plan
        )

    def count_one(self, row: Mapping[str, Any], probability: float) -> None:
        single = self._single
        for name, inner, offset in self._numeric_plan:
            value = row[name]
            if value is None or value != value:  # value != value: NaN
                single[offset + len(inner) + 1] += 1
            else:
                single[offset + bisect_right(inner, value)] += 1
        for name, lookup, unseen in self._categorical_plan:
            single[lookup.get(row[name], unseen)] += 1
        index = int(probability * PROBABILITY_BINS)
        single[self._prediction_offset + (index if index < PROBABILITY_BINS else PROBABILITY_BINS - 1)] += 1
        self._added(1)

    def numeric_arrays(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """The numeric columns as float64 arrays, None as NaN: what the predictors convert them to as well,
        so that a batch's caller can hand both the same arrays and convert each column once (columns that
        are such arrays already, as the prediction route makes them, are taken as they are)."""
        return {name: np.asarray(columns[name], dtype=np.float64) for name, _, _ in self._numeric_batch}

    def read_one_hot(self, positions: Sequence[tuple[str, Mapping[Any, int]]], width: int) -> None:
        """Count the categorical features of later batches off the one-hot matrix the fast predictor
        encodes them into (`FastPredictor.one_hot_positions`, `width` columns), instead of looking every
        value up again: one matrix product for all of them, where the lookups cost some 30 µs per
        feature per 1,000 rows. The same counts as the lookups (tests/monitoring/test_psi.py,
        tests/api/test_drift.py).

        Each category's column counts into its bin. A missing value gets the imputer's fill column:
        when training had missing values that is a column of its own (the fill is no training category),
        counted as missing. A row without a column is an unseen category, or a missing value whose fill
        training never saw; the predictor counts the unseen ones (`unknown`), the rest are missing. Only
        when the fill is a real category, or for a batch split across sub-windows, are the missing
        values counted in the column itself (`list.count(None)`)."""
        mapping = np.zeros((width, self.width))
        plan = []
        encoded = dict(positions)
        for item, start in zip(self.bins, self.offsets, strict=True):
            if not isinstance(item, CategoricalBins):
                continue
            lookup, found = item.lookup(start), encoded.get(item.name)
            if found is None:
                return  # a feature the predictor does not encode: keep looking values up
            unseen, missing = start + item.unseen_bin, start + item.missing_bin
            fill = found.get(None, -1)
            fill_category = next((key for key, at in found.items() if key is not None and at == fill), None)
            for category, column in found.items():
                if category is not None and column >= 0:
                    mapping[column, lookup.get(category, unseen)] = 1.0
            if fill < 0:
                kind, fill_bin = NO_FILL_COLUMN, -1
            elif fill_category is None or fill_category not in lookup:
                kind, fill_bin = FILL_COLUMN_OF_ITS_OWN, -1
                mapping[fill, :] = 0.0
                mapping[fill, missing] = 1.0
            else:
                kind, fill_bin = FILL_IS_A_CATEGORY, lookup[fill_category]
            plan.append((item.name, start, start + item.size, kind, fill_bin, missing, unseen))
        self._one_hot = (mapping, tuple(plan))

    @property
    def reads_one_hot(self) -> bool:
        return self._one_hot is not None

    def count_batch(
        self,
        columns: Mapping[str, Sequence[Any]],
        probabilities: np.ndarray,
        one_hot: np.ndarray | None = None,
        unknown: Mapping[str, int] | None = None,
    ) -> None:
        """Count a batch (numeric columns as lists or as numeric_arrays' arrays) in one bincount; its
        categorical features off `one_hot`, the predictor's matrix of it, with `unknown`, its count of
        unseen categories per feature, once read_one_hot was told how to read them."""
        rows = len(probabilities)
        if rows == 0:
            return
        parts = [
            np.searchsorted(edges, np.asarray(columns[name], dtype=np.float64), side="right") + offset
            for name, edges, offset in self._numeric_batch
        ]
        encoded = self._one_hot if one_hot is not None and unknown is not None else None
        if encoded is None:
            for name, lookup, unseen in self._categorical_plan:
                parts.append(np.fromiter(map(lookup.get, columns[name], repeat(unseen)), np.intp, rows))
        parts.append(probability_index(probabilities) + self._prediction_offset)
        indices = np.column_stack(parts)  # (rows, quantities): a row's bins are one contiguous row
        # The batch in the sub-windows it fills: once, unless it fills the current one.
        spans, start, room = [], 0, self.capacity - self._rows[self._current]
        while start < rows:
            spans.append((start, min(rows, start + room)))
            start, room = spans[-1][1], self.capacity
        categorical = (
            self._one_hot_counts(encoded, one_hot, columns, unknown, spans)
            if encoded is not None and one_hot is not None and unknown is not None
            else None
        )
        for index, (begin, end) in enumerate(spans):
            counts = np.bincount(indices[begin:end].ravel(), minlength=self.width)
            if categorical is not None:
                counts += categorical[index]
            self._counts[self._current] += counts
            self._undrained += counts
            self._added(end - begin)

    def _one_hot_counts(
        self,
        encoded: tuple[np.ndarray, tuple[tuple[str, int, int, int, int, int, int], ...]],
        matrix: np.ndarray,
        columns: Mapping[str, Sequence[Any]],
        unknown: Mapping[str, int],
        spans: list[tuple[int, int]],
    ) -> list[np.ndarray]:
        """The categorical bins' counts of each span of the batch, read off its one-hot matrix."""
        mapping, plan = encoded
        # ones @ matrix: the column sums through BLAS, a third of the time of matrix.sum(axis=0).
        per_span: list[list[int]] = [
            np.rint((np.ones(end - begin) @ matrix[begin:end]) @ mapping).astype(np.int64).tolist()
            for begin, end in spans
        ]
        # A span split off the batch counts its own missing values (`list.count(None)`), but the longest
        # gets what the batch's totals leave: a straddling batch scans only its shorter part.
        longest = max(range(len(spans)), key=lambda index: spans[index][1] - spans[index][0])
        for name, start, stop, kind, fill_bin, missing_bin, unseen_bin in plan:
            # Rows without a column of this feature, per span.
            lefts = [
                end - begin - sum(counts[start:stop])
                for (begin, end), counts in zip(spans, per_span, strict=True)
            ]
            if kind == FILL_COLUMN_OF_ITS_OWN:
                for counts, left in zip(per_span, lefts, strict=True):
                    counts[unseen_bin] += left
                continue
            missings = [
                0 if kind == NO_FILL_COLUMN and index == longest else _count_missing(columns[name][begin:end])
                for index, (begin, end) in enumerate(spans)
            ]
            if kind == NO_FILL_COLUMN:  # the unseen ones are what the predictor counted
                missings[longest] = sum(lefts) - unknown.get(name, 0) - sum(missings)
            for counts, left, missing in zip(per_span, lefts, missings, strict=True):
                if kind == FILL_IS_A_CATEGORY:
                    counts[fill_bin] -= missing  # the imputer wrote the fill's column for them
                    left += missing
                counts[missing_bin] += missing
                counts[unseen_bin] += left - missing
        return [np.array(counts, dtype=np.int64) for counts in per_span]

    def _added(self, rows: int) -> None:
        current = self._current
        self._rows[current] += rows
        if self._rows[current] >= self.capacity:
            self._flush()
            self._current = current = (current + 1) % self.buckets
            self._counts[current] = 0
            self._rows[current] = 0

    def _flush(self) -> None:
        if any(self._single):
            single = np.array(self._single, dtype=np.int64)
            self._counts[self._current] += single
            self._undrained += single
            self._single = [0] * self.width

    def drain(self) -> dict[str, np.ndarray]:
        """What was counted since the last drain, as `counts()` splits it (each feature's bins, then the
        prediction's), and start afresh. The sliding window is not touched."""
        self._flush()
        undrained, self._undrained = self._undrained, np.zeros(self.width, dtype=np.int64)
        return self._split(undrained)

    @property
    def rows(self) -> int:
        return sum(self._rows)

    def window(self) -> np.ndarray:
        """The window's counts, every quantity's bins side by side."""
        self._flush()
        total: np.ndarray = self._counts.sum(axis=0)
        return total

    def counts(self) -> dict[str, np.ndarray]:
        """The window's counts of each feature's bins, and of the prediction's."""
        return self._split(self.window())

    def _split(self, total: np.ndarray) -> dict[str, np.ndarray]:
        found = {
            item.name: total[start : start + item.size]
            for item, start in zip(self.bins, self.offsets, strict=True)
        }
        found[PREDICTION] = total[self._prediction_offset :]
        return found

    def psi(self) -> tuple[int, dict[str, float], float | None]:
        """(rows in the window, each feature's PSI, the prediction's PSI or None without a reference).
        Empty when the window is."""
        rows = self.rows
        if rows == 0:
            return 0, {}, None
        counts = self.counts()
        features = {item.name: psi(item.reference, counts[item.name]) for item in self.bins}
        prediction = None
        if self.prediction_reference is not None:
            prediction = psi(self.prediction_reference, counts[PREDICTION])
        return rows, features, prediction
