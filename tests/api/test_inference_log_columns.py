"""The inference log's table is the same whichever way its rows arrive: a batch's categorical values taken
from the fast predictor's codes, numeric ones from the float64 arrays the route converts, or both as the
lists the decoder gave; a single record as its values or as its request body."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa

from api import inference_log, log_store
from api.fast import FastPredictor
from api.inference_log import BATCH, BODY, RECORD, _inference_stream
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


def _record_entries(model, rows, at):
    """Each row as the route queues a record it scored: its values (RECORD) and its body (BODY), the same
    request id, label and probability."""
    order = model.requests.columns.order
    values, bodies = [], []
    for number, (row, body) in enumerate(rows):
        label, probability = model.labels[number % 2], number / len(rows)
        values.append(
            (at + number, (RECORD, f"r{number}", tuple(row[name] for name in order), label, probability))
        )
        bodies.append((at + number, (BODY, f"r{number}", body, label, probability)))
    return values, bodies


def _typed_bodies(api_registry, model):
    """Rows the fast decoder takes, as bodies written every way JSON allows: key order reversed, integers
    for numbers, pretty-printed over several lines, a trailing line break, escaped characters; missing values as null."""
    metadata = model.feature_metadata
    rows = api_registry.rows()[:60]
    for name, meta in metadata["categorical"].items():
        unseen = sorted(set(meta["allowed"]) - set(meta["categories"]))
        rows += [row | {name: unseen[0]} for row in rows[:3]] if unseen else []
        rows += [row | {name: None} for row in rows[:3]] if meta["nullable"] else []
    texts = []
    for number, row in enumerate(rows):
        if number % 4 == 0:
            text = json.dumps(dict(reversed(row.items())), indent=2)  # line breaks between the tokens
        elif number % 4 == 1:
            text = json.dumps({key: int(value) if isinstance(value, float) and value.is_integer() else value
                               for key, value in row.items()}, ensure_ascii=True)  # fmt: skip
        elif number % 4 == 2:
            text = json.dumps(row) + "\r\n"
        else:
            text = json.dumps(row).replace("-", "\\u002d")
        texts.append(text.encode())
    decoded = [model.requests.decoder.record(text) for text in texts]
    refused = [text for text, record in zip(texts, decoded, strict=True) if record is None]
    assert not refused, refused[:2]  # each one the route would queue as its body
    return list(zip(decoded, texts, strict=True))


def test_a_record_queued_as_its_body_is_the_table_of_its_values(api_registry):
    settings = api_registry.settings()
    model = load_registered(settings, resolve_alias(settings))
    stream = _inference_stream(model)
    values, bodies = _record_entries(model, _typed_bodies(api_registry, model), time.time())
    expected = stream.build(values)
    built = stream.build(bodies)
    assert built.schema == stream.schema and built.equals(expected)
    # A pass holds runs of every kind: each becomes its own table, in order.
    mixed = [*bodies[:10], *values[10:20], *bodies[20:]]
    assert stream.build(mixed).equals(expected)


def test_a_run_with_a_body_the_json_reader_refuses_is_built_from_the_values_the_route_scored(api_registry):
    settings = api_registry.settings()
    model = load_registered(settings, resolve_alias(settings))
    stream = _inference_stream(model)
    rows = _typed_bodies(api_registry, model)
    # A repeated key: the fast decoder keeps the last value, pyarrow's reader refuses the body.
    row, body = rows[5]
    first = next(name for name in model.requests.columns.numeric)
    repeated = b'{"%s": 17, ' % first.encode() + body.lstrip()[1:]
    assert model.requests.decoder.record(repeated) == row
    rows[5] = (row, repeated)
    values, bodies = _record_entries(model, rows, time.time())
    assert stream.build(bodies).equals(stream.build(values))


def test_a_record_is_queued_as_its_body_only_when_typed_and_small(api_registry):
    settings = api_registry.settings()
    model = load_registered(settings, resolve_alias(settings))
    writer = inference_log.LogWriter(
        log_store.LogStore.of("/nonexistent"), "inference", flush_seconds=60, flush_rows=10, retention_days=1,
        max_queued_rows=10, written=None, dropped=None, errors=None,
    )  # fmt: skip
    log = inference_log.InferenceLog(writer)
    row = api_registry.rows(1)[0]
    body = json.dumps(row).encode()
    features = len(model.requests.columns.order)
    padded = body[:-1] + b" " * (inference_log.MAX_QUEUED_BODY_BYTES_PER_FEATURE * features) + b"}"
    log.record(model, "typed", row, model.labels[0], 0.1, body)
    log.record(model, "untyped", row, model.labels[0], 0.1)  # pydantic's: its values
    log.record(model, "padded", row, model.labels[0], 0.1, padded)  # a body that size is mostly padding
    queued = [item[3] for item in writer._queue]
    assert [payload[:3] for payload in queued] == [
        (BODY, "typed", body),
        (RECORD, "untyped", tuple(row[name] for name in model.requests.columns.order)),
        (RECORD, "padded", tuple(row[name] for name in model.requests.columns.order)),
    ]
