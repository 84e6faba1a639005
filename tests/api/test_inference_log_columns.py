"""The inference log's batch table is the same whichever way its columns arrive: categorical values taken
from the fast predictor's codes, numeric ones from the float64 arrays the route converts, or both as the
lists the decoder gave."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from api.fast import FastPredictor
from api.inference_log import BATCH, RECORD, _inference_stream
from api.loading import load_registered
from api.predictor import columns_of
from api.registry import resolve_alias
from api.routes.predictions import numeric_arrays


def test_a_batch_from_codes_and_arrays_is_the_table_of_its_lists(api_registry):
    settings = api_registry.settings()
    model = load_registered(settings, resolve_alias(settings))
    assert isinstance(model.predictor, FastPredictor)
    metadata = model.feature_metadata
    rows = api_registry.rows()[:300]
    # Missing values, categories training never saw, and a category's text where the fill's column is.
    for name, meta in metadata["categorical"].items():
        unseen = sorted(set(meta["allowed"]) - set(meta["categories"]))
        rows += [row | {name: unseen[0]} for row in rows[:7]] if unseen else []
        rows += [row | {name: None} for row in rows[:5]] if meta["nullable"] else []
    for name in metadata["numeric"]:
        rows += [row | {name: None} for row in rows[:3]]
    for name, lookup in model.predictor.one_hot_positions:
        fill = lookup.get(None, -1)
        texts = [category for category, column in lookup.items() if category is not None and column == fill]
        rows += [row | {name: texts[0]} for row in rows[:4]] if texts else []
    stream = _inference_stream(model)
    at = time.time()
    entries, references = [], []
    for number, start in enumerate(range(0, len(rows), 97)):
        lists = columns_of(rows[start : start + 97], model.requests.columns.order)
        arrays = numeric_arrays(lists, model)
        codes: dict[str, np.ndarray] | None = {}
        prepared, _ = model.predictor.prepare(arrays, codes)
        probabilities = model.predictor.score(prepared)
        positive = probabilities > model.threshold
        if number % 4 == 3:
            codes = None  # a batch whose codes were not asked for, between others
        entries.append((at + number, (BATCH, f"b{start}", arrays, probabilities, positive, codes)))
        reference = stream.build([(at + number, (BATCH, f"b{start}", lists, probabilities, positive, None))])
        references.append(reference)
        built = stream.build(entries[-1:])
        assert built.schema == reference.schema == stream.schema
        assert built.equals(reference)
        assert built["request_id"].to_pylist() == [f"b{start}-{i}" for i in range(len(positive))]
        for name in metadata["numeric"]:  # a missing number is null in both, not NaN
            assert built[name].null_count == sum(value is None for value in lists[name])
    # A writer's pass takes many batches (and records between them) at once: the same rows, in order.
    record = (
        RECORD,
        "one",
        tuple(rows[0][name] for name in model.requests.columns.order),
        model.labels[1],
        0.5,
    )
    record_table = stream.build([(at, record)])
    mixed = [*entries[:5], (at, record), *entries[5:]]
    together = stream.build(mixed)
    expected = pa.concat_tables([*references[:5], record_table, *references[5:]])
    assert together.schema == stream.schema and together.equals(expected)
