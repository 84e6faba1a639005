"""The proof a compiled predictor owes before it serves: it answers what the logged pipeline answers, on
every route it can take, for rows chosen to reach every corner of the contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from api.fast.predictor import FastPredictor, UnsupportedPipeline
from api.predictor import Columns, Row

PROBE_SEED = 20240601


def parity_batch_sizes(predictor: FastPredictor, rows: int) -> list[int]:
    """Batch sizes that take every route of `predictor.score`: each route's largest batch (the probe in
    chunks of that size, whose last chunk is usually a smaller one), then the whole probe at once, which
    `verify_parity` makes larger than every limit."""
    return sorted({*predictor.batch_limits, rows})


def verify_parity(predictor: FastPredictor, rows: Sequence[Row], expected: np.ndarray) -> float:
    """The largest |fast - expected| probability over every batch route and the one-record route."""
    if not rows:
        raise UnsupportedPipeline("no rows to verify the fast path on")
    largest = max(predictor.batch_limits, default=0)
    if len(rows) <= largest:  # the last route needs a batch above every limit: repeat the rows
        repeats = largest // len(rows) + 1
        rows, expected = list(rows) * repeats, np.tile(expected, repeats)
    errors = []
    for size in parity_batch_sizes(predictor, len(rows)):
        for start in range(0, len(rows), size):
            chunk = predictor.predict_rows(rows[start : start + size])[0]
            errors.append(np.abs(chunk - expected[start : start + size]))
    singles = np.array([predictor.predict_one(row)[0] for row in rows])
    errors.append(np.abs(singles - expected))
    return float(max(np.max(error) for error in errors))


def synthetic_rows(metadata: dict[str, Any], columns: Columns, count: int) -> list[dict[str, Any]]:
    """Rows that cover every allowed category, missing values and the whole allowed range of each number:
    the fast path has to agree with the pipeline on all of it, not only on typical rows."""
    if count == 0:
        return []
    rng = np.random.default_rng(PROBE_SEED)
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for name in columns.numeric:
        meta = metadata.get("numeric", {}).get(name, {})
        low = meta.get("min", meta.get("observed_min", 0.0))
        high = meta.get("max", meta.get("observed_max", 1.0))
        values = rng.uniform(low, high, size=count)
        edges = meta.get("histogram", {}).get("edges", [])
        if edges:  # also the values training actually had
            values[: count // 2] = rng.choice(np.asarray(edges, dtype=float), size=count // 2)
        if str(meta.get("dtype", "")).startswith(("int", "uint")):
            values = np.round(values)
        for row, value in zip(rows, values.tolist(), strict=True):
            row[name] = value
        if meta.get("nullable"):
            for index in rng.choice(count, size=max(1, count // 10), replace=False):
                rows[int(index)][name] = None
    for name in columns.categorical:
        meta = metadata.get("categorical", {}).get(name, {})
        choices: list[Any] = list(meta.get("allowed") or meta.get("categories") or ["__unseen__"])
        if meta.get("nullable"):
            choices.append(None)
        order = rng.permutation(count)
        for position, index in enumerate(order.tolist()):
            rows[index][name] = choices[position % len(choices)]
    return rows
