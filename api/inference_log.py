"""The inference and feedback logs: what the service scored (and the labels sent back), as Parquet files
that pandas, DuckDB or a retraining stage can read while the service runs.

Layout, Hive-style, under the log's directory:
`model_name=<n>/model_version=<v>/date=YYYY-MM-DD/<HH>-<uuid>.parquet` (UTC). The model's name, version
and the date are partition columns: readers get them from the path (`pd.read_parquet(directory)`), so
the files do not repeat them.

The request path never waits: it appends one item to a bounded queue (a batch is one item that holds its
columns as they are) and returns. A writer thread turns items into columns, and writes a partition's
rows as one file once it holds INFERENCE_LOG_FLUSH_ROWS records or its first record is
INFERENCE_LOG_FLUSH_SECONDS old. A file is written under a `.`-prefixed name and renamed, and readers
skip `.` files: they only ever see complete ones. Past INFERENCE_LOG_QUEUE_ROWS waiting records, new
ones are dropped and counted (`inference_log_dropped_total`); a failed write is logged and counted
(`inference_log_write_errors_total`), and never reaches a request. Date partitions older than
INFERENCE_LOG_RETENTION_DAYS are deleted (the log holds raw personal attributes), at start and hourly.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter

from api.loading import ServedModel
from api.predictor import Label

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often the writer looks at the queue: the request path only appends
RETENTION_CHECK_SECONDS = 3600.0
DATE_PREFIX = "date="


def arrow_type(label: Label) -> pa.DataType:
    if isinstance(label, bool):
        return pa.bool_()
    return pa.int64() if isinstance(label, int) else pa.string()


@dataclass(frozen=True, eq=False)  # hashed by identity: one per model and log
class Stream:
    """Where one model's records go and what a file of them holds."""

    partition: Path  # model_name=<n>/model_version=<v>, relative to the log's directory
    schema: pa.Schema

    @classmethod
    def of(cls, model: ServedModel, columns: Iterable[tuple[str, pa.DataType]]) -> Stream:
        registry = model.registry
        partition = Path(f"model_name={registry.name}") / f"model_version={registry.version or 'none'}"
        return cls(partition, pa.schema(list(columns)))


@dataclass
class _Buffer:
    """The rows of one file to be: one list per column, and when its first row arrived."""

    stream: Stream
    directory: Path
    hour: int
    opened: float
    columns: dict[str, list[Any]] = field(default_factory=dict)
    rows: int = 0


# Appends an item's rows to a buffer's columns, given the item's time: it runs on the writer thread, so
# the request path builds nothing per row.
Append = Callable[[dict[str, list[Any]], datetime], None]
# An item on the queue: (stream, unix time, how many rows, its Append).
Item = tuple[Stream, float, int, Append]


def write_parquet(table: pa.Table, path: Path) -> None:
    """`table` at `path`, visible only once whole: written as `.<name>`, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = path.with_name("." + path.name)
    pq.write_table(table, hidden)
    os.replace(hidden, path)


class LogWriter:
    """One log's queue and the thread that writes it."""

    def __init__(
        self,
        root: Path,
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
        self.root, self.name = root, name
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
    def submit(self, stream: Stream, rows: int, append: Append) -> bool:
        """Queue `rows` records (appended to columns by `append`, later); False when dropped."""
        with self._lock:
            if self._queued_rows + rows > self.max_queued_rows:
                full = True
            else:
                full = False
                self._queued_rows += rows
                self._queue.append((stream, time.time(), rows, append))
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
            self._drain()
            self._flush(everything=stopping)
            if time.monotonic() >= self._next_retention:
                self._next_retention = time.monotonic() + RETENTION_CHECK_SECONDS
                self.enforce_retention()
            if stopping:
                return

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                stream, at, rows, append = self._queue.popleft()
                self._queued_rows -= rows
            moment = datetime.fromtimestamp(at, UTC)
            day = moment.date().isoformat()
            key = (stream, day, moment.hour)
            buffer = self._buffers.get(key)
            if buffer is None:
                directory = self.root / stream.partition / f"{DATE_PREFIX}{day}"
                buffer = _Buffer(stream, directory, moment.hour, time.monotonic())
                buffer.columns = {name: [] for name in stream.schema.names}
                self._buffers[key] = buffer
            try:
                append(buffer.columns, moment)
            except Exception:  # a record that cannot be turned into columns must not stop the writer
                log.exception("the %s log could not take %d records", self.name, rows)
                self._errors.inc(rows)
                self._buffers.pop(key)
                continue
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
        path = buffer.directory / f"{buffer.hour:02d}-{uuid.uuid4()}.parquet"
        try:
            write_parquet(pa.table(buffer.columns, schema=buffer.stream.schema), path)
        except Exception:  # a full disk or a bad value loses these rows, never the writer or a request
            log.exception("the %s log could not write %d records to %s", self.name, buffer.rows, path)
            self._errors.inc(buffer.rows)
            return
        self._written.inc(buffer.rows)

    def enforce_retention(self, today: date | None = None) -> list[Path]:
        """Delete the date partitions older than the retention; the ones deleted."""
        oldest = (today or datetime.now(UTC).date()) - timedelta(days=self.retention_days)
        deleted = []
        for directory in self.root.glob(f"model_name=*/model_version=*/{DATE_PREFIX}*"):
            try:
                day = date.fromisoformat(directory.name.removeprefix(DATE_PREFIX))
            except ValueError:
                continue  # not ours
            if day < oldest:
                shutil.rmtree(directory, ignore_errors=True)
                deleted.append(directory)
        if deleted:
            log.info("the %s log deleted %d date partitions before %s", self.name, len(deleted), oldest)
        return deleted


class InferenceLog:
    """What the prediction routes hand over: each scored record, by the model that scored it."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer
        self._model: ServedModel | None = None
        self._stream: Stream | None = None
        self._features: tuple[str, ...] = ()

    def _stream_of(self, model: ServedModel) -> Stream:
        if model is not self._model:  # a new model: its features and label type
            columns = model.requests.columns
            types = [(name, pa.float64()) for name in columns.numeric]
            types += [(name, pa.string()) for name in columns.categorical]
            fixed = [("request_id", pa.string()), ("time", pa.timestamp("us", tz="UTC"))]
            scored = [("probability", pa.float64()), ("label", arrow_type(model.labels[0]))]
            self._stream = Stream.of(model, [*fixed, *types, *scored])
            self._features, self._model = columns.order, model
        assert self._stream is not None
        return self._stream

    def record(
        self, model: ServedModel, request_id: str, row: Mapping[str, Any], label: Label, probability: float
    ) -> None:
        stream = self._stream_of(model)
        features = self._features

        def append(columns: dict[str, list[Any]], at: datetime) -> None:
            columns["request_id"].append(request_id)
            columns["time"].append(at)
            for name in features:
                columns[name].append(row.get(name))
            columns["probability"].append(probability)
            columns["label"].append(label)

        self.writer.submit(stream, 1, append)

    def batch(
        self,
        model: ServedModel,
        request_id: str,
        features: Mapping[str, Sequence[Any]],
        probabilities: np.ndarray,
        positive: np.ndarray,
    ) -> None:
        stream = self._stream_of(model)
        names, labels, rows = self._features, model.labels, len(probabilities)

        def append(columns: dict[str, list[Any]], at: datetime) -> None:
            columns["request_id"].extend(f"{request_id}-{index}" for index in range(rows))
            columns["time"].extend([at] * rows)
            for name in names:
                columns[name].extend(features[name])
            columns["probability"].extend(probabilities.tolist())
            columns["label"].extend(np.array(labels, dtype=object)[positive.astype(np.intp)].tolist())

        self.writer.submit(stream, rows, append)
