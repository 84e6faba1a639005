"""The inference and feedback logs: what the service scored (and the labels sent back), as Parquet files
that pandas, DuckDB or a retraining stage can read while the service runs.

Layout, Hive-style, under the log's directory or `s3://` prefix (api/log_store.py keeps the files):
`model_name=<n>/model_version=<v>/date=YYYY-MM-DD/<HH>-<uuid>.parquet` (UTC). The model's name, version
and the date are partition columns: readers get them from the path (`pd.read_parquet(directory)`), so
the files do not repeat them.

The request path never waits: it appends one tuple to a bounded queue (a batch is one item that holds its
columns and probabilities as they are, a single record its request body) and returns. A writer thread sorts items into files to be, and
writes one once it holds INFERENCE_LOG_FLUSH_ROWS records or its first record is
INFERENCE_LOG_FLUSH_SECONDS old. What each pass over the queue took is turned into Arrow columns at once,
in bulk (pyarrow's JSON reader for single records, numpy arrays for batches): per-row Python in the writer thread holds the GIL against the
event loop, and a minute of rows kept as Python objects would weigh on every garbage collection. A file is written under a `.`-prefixed name and renamed, and readers
skip `.` files: they only ever see complete ones. Past INFERENCE_LOG_QUEUE_ROWS waiting records, new
ones are dropped and counted (`inference_log_dropped_total`); a failed write is logged and counted
(`inference_log_write_errors_total`), and never reaches a request. Date partitions older than
INFERENCE_LOG_RETENTION_DAYS are deleted (the log holds raw personal attributes), at start and hourly.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import chain, groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from prometheus_client import Counter

from api.fast.predictor import NO_COLUMN, UNKNOWN
from api.loading import ServedModel
from api.log_store import DATE_PREFIX, LogStore, write_parquet
from api.predictor import Codes, Label

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often the writer looks at the queue: the request path only appends
RETENTION_CHECK_SECONDS = 3600.0
RECORD, BODY, BATCH = "record", "body", "batch"  # what an inference log item holds
# A body's line breaks are JSON whitespace only (a string cannot hold one raw), so they become spaces and
# each body one line of the newline-delimited JSON the writer parses.
ONE_LINE = bytes.maketrans(b"\r\n", b"  ")
# A record's body is queued as it is up to this many bytes per feature (a key, a value, JSON's punctuation
# and some spaces); a larger one, which only padding makes so large, as its values. The queue bounds
# records, not bytes: this keeps each one about as heavy as its values were (a full default queue of
# 100,000 records of 13 features: at most 130 MB).
MAX_QUEUED_BODY_BYTES_PER_FEATURE = 100
# The JSON reader's block: any number of bodies, each on one line shorter than this (a model of 10,000
# features at most; a larger one is parsed by blocks of its size).
JSON_BLOCK_BYTES = 1 << 20


def arrow_type(label: Label) -> pa.DataType:
    if isinstance(label, bool):
        return pa.bool_()
    return pa.int64() if isinstance(label, int) else pa.string()


# A file's items: (unix time, payload) each, in arrival order; a stream's `build` makes them a table.
Entries = list[tuple[float, Any]]


@dataclass(frozen=True, eq=False)  # hashed by identity: one per model and log
class Stream:
    """Where one model's records go, what a file of them holds, and how its items become a table."""

    partition: Path  # model_name=<n>/model_version=<v>, relative to the log's directory
    schema: pa.Schema
    build: Callable[[Entries], pa.Table]

    @staticmethod
    def partition_of(model: ServedModel) -> Path:
        registry = model.registry
        return Path(f"model_name={registry.name}") / f"model_version={registry.version or 'none'}"


TIMESTAMP = pa.timestamp("us", tz="UTC")


def timestamps(times: Sequence[float]) -> pa.Array:
    """Unix times as UTC microsecond timestamps, in one numpy step."""
    micros = (np.asarray(times, dtype=np.float64) * 1e6).astype(np.int64)
    return pa.array(micros, type=TIMESTAMP)


def repeated_timestamps(times: Sequence[float], rows: Sequence[int]) -> pa.Array:
    """`timestamps` of each time repeated its number of rows, without the list: 12 µs per 1,000 rows,
    not 45."""
    micros = (np.asarray(times, dtype=np.float64) * 1e6).astype(np.int64)
    return pa.array(np.repeat(micros, rows), type=TIMESTAMP)


class SuffixedIds:
    """`<request id>-<i>` for i in 0 .. rows - 1, as an Arrow string array: pyarrow joins the prefix to
    the indices' digits (kept as one array, grown to the largest batch seen) in C++, 40 µs per 1,000 rows
    where 1,000 f-strings and their conversion took 180 µs of the writer's GIL. Used by the writer thread
    alone."""

    def __init__(self) -> None:
        self._digits = pa.array([], type=pa.string())

    def __call__(self, request_id: str, rows: int) -> pa.Array:
        if len(self._digits) < rows:
            self._digits = pa.array([str(index) for index in range(max(rows, 2 * len(self._digits)))])
        joined: pa.Array = pc.binary_join_element_wise(request_id + "-", self._digits[:rows], "")
        return joined

    def many(self, request_ids: Sequence[str], rows: Sequence[int]) -> pa.Array:
        """The ids of several batches, one after the other."""
        if len(request_ids) == 1:
            return self(request_ids[0], rows[0])
        self(request_ids[0], max(rows))  # the digits, long enough
        prefixes = pa.array([request_id + "-" for request_id in request_ids], type=pa.string())
        repeated = prefixes.take(pa.array(np.repeat(np.arange(len(rows)), rows)))
        digits = pa.concat_arrays([self._digits[:count] for count in rows])
        joined: pa.Array = pc.binary_join_element_wise(repeated, digits, "")
        return joined


@dataclass
class _Buffer:
    """One file to be: its rows as Arrow tables, one per pass over the queue, and when it was opened."""

    stream: Stream
    directory: str  # the date partition, relative to the log's root
    hour: int
    opened: float
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0


# An item on the queue: (stream, unix time, how many rows, its payload, which the stream's build reads).
Item = tuple[Stream, float, int, Any]


class LogWriter:
    """One log's queue and the thread that writes it."""

    def __init__(
        self,
        store: LogStore,
        name: str,
        *,
        flush_seconds: float,
        flush_rows: int,
        retention_days: int,
        max_queued_rows: int,
        written: Counter,
        dropped: Counter,
        errors: Counter,
    ) -> None:
        self.store, self.name = store, name
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self.retention_days, self.max_queued_rows = retention_days, max_queued_rows
        self._written, self._dropped, self._errors = written, dropped, errors
        self._queue: deque[Item] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._buffers: dict[tuple[Stream, str, int], _Buffer] = {}
        self._next_retention = 0.0

    # ------------------------------------------------------------------ the request path
    def submit(self, stream: Stream, rows: int, payload: Any) -> bool:
        """Queue `rows` records (the stream's build reads `payload`, later); False when dropped."""
        with self._lock:
            if self._queued_rows + rows > self.max_queued_rows:
                full = True
            else:
                full = False
                self._queued_rows += rows
                self._queue.append((stream, time.time(), rows, payload))
        if full:
            self._dropped.inc(rows)
        return not full

    # ------------------------------------------------------------------ the writer thread
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and buffered, then end the thread (given up on after `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the %s log writer did not finish within %g s", self.name, timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(POLL_SECONDS)
            try:
                self._drain()
                self._flush(everything=stopping)
                if time.monotonic() >= self._next_retention:
                    self._next_retention = time.monotonic() + RETENTION_CHECK_SECONDS
                    self.enforce_retention()
            except Exception:  # a bug here must cost a pass, not the thread: records would pile up unseen
                log.exception("the %s log writer's pass failed", self.name)
            if stopping:
                return

    def _drain(self) -> None:
        """Take what the queue holds (new items wait for the next pass) into the buffers, as tables."""
        taken: dict[tuple[Stream, str, int], tuple[Entries, list[int]]] = {}
        hour_start, day, hour = -1.0, "", 0
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        for stream, at, rows, payload in items:
            if not hour_start <= at < hour_start + 3600:  # the date and hour change rarely
                moment = datetime.fromtimestamp(at, UTC)
                day, hour = moment.date().isoformat(), moment.hour
                hour_start = at - (moment.minute * 60 + moment.second + moment.microsecond / 1e6)
            entries, counts = taken.setdefault((stream, day, hour), ([], []))
            entries.append((at, payload))
            counts.append(rows)
        for key, (entries, counts) in taken.items():
            self._take(key, entries, sum(counts))

    def _take(self, key: tuple[Stream, str, int], entries: Entries, rows: int) -> None:
        stream, day, hour = key
        try:
            table = stream.build(entries)
        except Exception:  # records that cannot become columns are lost, never the writer or a request
            log.exception("the %s log could not take %d records", self.name, rows)
            self._errors.inc(rows)
            return
        buffer = self._buffers.get(key)
        if buffer is None:
            directory = f"{stream.partition.as_posix()}/{DATE_PREFIX}{day}"
            buffer = self._buffers[key] = _Buffer(stream, directory, hour, time.monotonic())
        buffer.tables.append(table)
        buffer.rows += rows
        if buffer.rows >= self.flush_rows:
            self._write(key)

    def _flush(self, everything: bool) -> None:
        now = time.monotonic()
        for key, buffer in list(self._buffers.items()):
            if everything or now - buffer.opened >= self.flush_seconds:
                self._write(key)

    def _write(self, key: tuple[Stream, str, int]) -> None:
        buffer = self._buffers.pop(key)
        if not buffer.rows:
            return
        path = self.store.path(buffer.directory, f"{buffer.hour:02d}-{uuid.uuid4()}.parquet")
        try:
            write_parquet(pa.concat_tables(buffer.tables), self.store.filesystem, path)
        except Exception:  # a full disk or a bad value loses these rows, never the writer or a request
            log.exception("the %s log could not write %d records to %s", self.name, buffer.rows, path)
            self._errors.inc(buffer.rows)
            return
        self._written.inc(buffer.rows)

    def enforce_retention(self, today: date | None = None) -> list[str]:
        """Delete the date partitions older than the retention; the ones deleted. Each is tried on its own:
        another worker's writer may delete the same one first."""
        oldest = (today or datetime.now(UTC).date()) - timedelta(days=self.retention_days)
        deleted: list[str] = []
        try:
            partitions = self.store.date_partitions()
        except OSError:  # an unreachable store: tried again at the next check, never the writer's end
            log.exception("the %s log could not list its partitions at %s", self.name, self.store.location)
            return deleted
        for directory in partitions:
            try:
                day = date.fromisoformat(directory.rsplit("/", 1)[-1].removeprefix(DATE_PREFIX))
            except ValueError:
                continue  # not ours
            if day >= oldest:
                continue
            try:
                self.store.delete(directory)
            except FileNotFoundError:
                continue  # gone already
            except OSError:
                log.exception("the %s log could not delete %s", self.name, directory)
                continue
            deleted.append(directory)
        if deleted:
            log.info("the %s log deleted %d date partitions before %s", self.name, len(deleted), oldest)
        return deleted


class InferenceLog:
    """What the prediction routes hand over: each scored record, by the model that scored it. A record is
    queued as (BODY, request id, its request body, label, probability) when the route says the body's JSON
    holds its values exactly as typed (the fast decoder took it), else as (RECORD, request id, its values,
    label, probability); a batch as (BATCH, request id, its
    columns, probabilities, which are positive, the predictor's categorical codes or None): references
    only, but a record's values as a tuple in the log's column order, not its dict. A tuple of numbers
    and strings is one the garbage collector stops tracking, where the dicts, held until the writer's
    next pass (up to a thousand at a time), were scanned by each collection meanwhile; and the writer
    turns the tuples into columns with one zip instead of reading every dict by name."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer
        self._model: ServedModel | None = None
        self._stream: Stream | None = None
        self._values: Callable[[Mapping[str, Any]], tuple[Any, ...]] = tuple
        self._max_body_bytes = 0

    def _stream_of(self, model: ServedModel) -> Stream:
        if model is not self._model:  # a new model: its features and label type
            self._stream, self._model = _inference_stream(model), model
            self._values = _values_of(model.requests.columns.order)
            self._max_body_bytes = MAX_QUEUED_BODY_BYTES_PER_FEATURE * len(model.requests.columns.order)
        assert self._stream is not None
        return self._stream

    def record(
        self,
        model: ServedModel,
        request_id: str,
        row: Mapping[str, Any],
        label: Label,
        probability: float,
        body: bytes | None = None,
    ) -> None:
        stream = self._stream if model is self._model else self._stream_of(model)
        assert stream is not None
        if body is not None and len(body) <= self._max_body_bytes:
            self.writer.submit(stream, 1, (BODY, request_id, body, label, probability))
        else:
            self.writer.submit(stream, 1, (RECORD, request_id, self._values(row), label, probability))

    def batch(
        self,
        model: ServedModel,
        request_id: str,
        features: Mapping[str, Sequence[Any]],
        probabilities: np.ndarray,
        positive: np.ndarray,
        codes: Codes | None = None,
    ) -> None:
        payload = (BATCH, request_id, features, probabilities, positive, codes)
        self.writer.submit(self._stream_of(model), len(probabilities), payload)


def _values_of(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A record's values, in the log's column order (`columns.order`), as a tuple."""
    if len(names) == 1:
        (name,) = names
        return lambda row: (row[name],)
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]] = itemgetter(*names)
    return getter


def _inference_stream(model: ServedModel) -> Stream:
    columns = model.requests.columns
    features = pa.schema(
        [(name, pa.float64()) for name in columns.numeric]
        + [(name, pa.string()) for name in columns.categorical]
    )
    parse_options = pa_json.ParseOptions(explicit_schema=features, unexpected_field_behavior="ignore")
    block_bytes = max(JSON_BLOCK_BYTES, MAX_QUEUED_BODY_BYTES_PER_FEATURE * len(features) + 1)
    decoder = model.requests.decoder
    label_type = arrow_type(model.labels[0])
    label_values = pa.array(list(model.labels), type=label_type)
    suffixed = SuffixedIds()
    by_code = _categories_by_code(model)
    schema = pa.schema(
        [
            ("request_id", pa.string()),
            ("time", pa.timestamp("us", tz="UTC")),
            *features,
            ("probability", pa.float64()),
            ("label", label_type),
        ]
    )

    def build(entries: Entries) -> pa.Table:
        # Records sent one by one, and batches, arrive in runs of their kind: each run becomes one table,
        # in one pyarrow call per column. Per batch, those calls' own overhead was about half of its
        # table: measured, 20 batches of 1,000 rows took 9.3 ms as 20 tables, 3.3-4.7 ms as one.
        tables = []
        for kind, grouped in groupby(entries, key=lambda entry: entry[1][0]):
            run = list(grouped)
            tables.append({RECORD: _records, BODY: _bodies, BATCH: _batches}[kind](run))
        return pa.concat_tables(tables) if len(tables) != 1 else tables[0]

    def _bodies(run: list[tuple[float, Any]]) -> pa.Table:
        # A run of single records, each as its request body: pyarrow's JSON reader makes the feature
        # columns in C++ with the GIL released. Built from the records' values instead, they held the GIL
        # against the event loop for about 5 ms per 1,000 records while the service was busy, and the p99
        # of single records at 32 connections went from about 5 ms with the log off to about 10 with it on
        # (about 7 this way). A run with a body the reader refuses (a repeated key: the fast decoder keeps
        # the last one) is decoded again by the fast decoder, and built from the values it gives, as
        # the route scored them.
        payloads = [payload for _, payload in run]
        text = b"\n".join([payload[2].translate(ONE_LINE) for payload in payloads])
        try:
            parsed = pa_json.read_json(
                pa.BufferReader(text),
                # One thread: the rows in the bodies' order, and no pool competing for the cores.
                read_options=pa_json.ReadOptions(use_threads=False, block_size=block_bytes),
                parse_options=parse_options,
            )
        except (pa.ArrowException, ValueError, OverflowError):
            parsed = None
        if parsed is None or parsed.num_rows != len(payloads):  # a body only Python reads as it was served
            return _records([(at, _as_record(payload)) for at, payload in run])
        return pa.Table.from_arrays(
            [
                pa.array([payload[1] for payload in payloads], type=pa.string()),
                timestamps([at for at, _ in run]),
                *(parsed.column(field.name).combine_chunks() for field in features),
                pa.array([payload[4] for payload in payloads], type=pa.float64()),
                pa.array([payload[3] for payload in payloads], type=label_type),
            ],
            schema=schema,
        )

    def _as_record(payload: Any) -> Any:
        decoded = decoder.record(payload[2]) if decoder is not None else None
        if decoded is None:  # never: a body is queued only when this decoder took it
            raise ValueError(f"request {payload[1]}: a queued body the fast decoder refuses")
        return (RECORD, payload[1], tuple(decoded[field.name] for field in features), *payload[3:])

    def _records(run: list[tuple[float, Any]]) -> pa.Table:
        values = zip(*(payload[2] for _, payload in run), strict=True)  # by column
        return pa.Table.from_arrays(
            [
                pa.array([payload[1] for _, payload in run], type=pa.string()),
                timestamps([at for at, _ in run]),
                *(pa.array(column, type=field.type) for column, field in zip(values, features, strict=True)),
                pa.array([payload[4] for _, payload in run], type=pa.float64()),
                pa.array([payload[3] for _, payload in run], type=label_type),
            ],
            schema=schema,
        )

    def _batches(run: list[tuple[float, Any]]) -> pa.Table:
        payloads = [payload for _, payload in run]
        rows = [len(payload[3]) for payload in payloads]
        codes = [payload[5] for payload in payloads]
        positive = np.concatenate([np.asarray(payload[4], dtype=np.bool_) for payload in payloads])
        return pa.Table.from_arrays(
            [
                suffixed.many([payload[1] for payload in payloads], rows),
                repeated_timestamps([at for at, _ in run], rows),
                *(
                    _column(column, [payload[2][column.name] for payload in payloads], codes, by_code)
                    for column in features
                ),
                pa.array(np.concatenate([np.asarray(payload[3], dtype=np.float64) for payload in payloads])),
                # Each row's label picked from the two in C++ (10 µs per 1,000 rows, not 57 for a list).
                label_values.take(pa.array(positive.view(np.uint8))),
            ],
            schema=schema,
        )

    return Stream(Stream.partition_of(model), schema, build)


# A categorical feature's values by the predictor's codes: the category of each one-hot column (null for
# the other columns), then a null for a missing value; and the column a missing value gets (or -1).
CodeBook = tuple[pa.Array, int]


def _categories_by_code(model: ServedModel) -> dict[str, CodeBook]:
    """For each categorical feature the fast predictor encodes one category per column, its CodeBook."""
    positions = getattr(model.predictor, "one_hot_positions", ())
    width = getattr(model.predictor, "width", 0)
    books = {}
    for name, lookup in positions:
        categories: list[Any] = [None] * (width + 1)
        shared = False
        for category, column in lookup.items():
            if category is None or column < 0:
                continue
            shared = shared or categories[column] is not None
            categories[column] = category
        if not shared and all(isinstance(value, str | None) for value in categories):
            books[name] = (pa.array(categories, type=pa.string()), lookup.get(None, NO_COLUMN))
    return books


def _column(
    field: pa.Field, parts: list[Any], codes: list[Codes | None], by_code: dict[str, CodeBook]
) -> pa.Array:
    """One feature's column of some batches (its values in each, `parts`), as received. A numeric one may
    come as the float64 arrays the predictor took, where NaN stands for a missing value (JSON has no NaN):
    null in the file, as from a list (from_pandas). A categorical one is taken from the codes the
    predictor found for it, when it left them for every batch, by one `take` in C++ (about 10 µs per
    1,000 rows): converting 1,000 Python strings costs 30-45 µs of the writer's GIL per feature, the
    largest part of a batch's table before."""
    if all(isinstance(part, np.ndarray) for part in parts):
        return pa.array(np.concatenate(parts), type=field.type, from_pandas=True)
    values = parts[0] if len(parts) == 1 else list(chain.from_iterable(parts))
    book = by_code.get(field.name)
    found = [batch[field.name] for batch in codes if batch is not None and field.name in batch]
    if book is not None and len(found) == len(codes):
        column = _from_codes(values, np.concatenate(found) if len(found) > 1 else found[0], book)
        if column is not None:
            return column
    return pa.array(values, type=field.type, from_pandas=True)


def _from_codes(values: Any, codes: np.ndarray, book: CodeBook) -> pa.Array | None:
    """The values from their one-hot columns; None when the codes cannot tell (see below)."""
    categories, fill = book
    missing = len(categories) - 1  # the null entry
    nulls = codes == NO_COLUMN
    if fill >= 0:
        # A missing value gets the fill's column, which a sent category may share (the fill can be a real
        # category, or a client may send the fill's text): only when that column holds exactly the
        # missing values does it mean missing.
        at_fill = codes == fill
        if int(np.count_nonzero(at_fill)) != _nones(values):
            return None
        nulls |= at_fill
    indices = np.where(nulls, missing, codes)
    unseen = np.flatnonzero(codes == UNKNOWN)
    if unseen.size:  # categories training never saw: their own text, appended to the book for this batch
        rows = unseen.tolist()
        categories = pa.concat_arrays([categories, pa.array([values[row] for row in rows], type=pa.string())])
        indices[unseen] = missing + 1 + np.arange(unseen.size)
    column: pa.Array = categories.take(pa.array(indices))
    return column


def _nones(values: Any) -> int:
    return (values if isinstance(values, list) else list(values)).count(None)  # list.count: C, 5 µs
