"""Feedback for a prediction another process served: joined from the inference log, in the background.

With WORKERS=N, or several pods, a /feedback item usually reaches a process whose index of recent
predictions (api/feedback.py) never held its request id. Every process logs every scored record to the
inference log with its id and probability, so when INFERENCE_LOG_DIR is set such an item waits here,
`pending`, for up to FEEDBACK_JOIN_WAIT_SECONDS. Every DRIFT_INTERVAL_SECONDS, while anything waits, the
pass reads the log files it has not read yet, off the event loop: only the `request_id` and `probability`
columns, only the partitions of the models the waiting items were sent for (every version of each: after a
swap, a label may come for a prediction of the version before), and only the date partitions a wait can
still reach (yesterday's and today's, or further back for a wait longer than a day). A waiting id found there is matched; one still missing once its wait is over is
unknown.

What was read is kept as Arrow tables of those two columns, the newest FEEDBACK_INDEX_SIZE records across
the files: a label that comes after its prediction's file was read finds it there, as it would have in the
index of the process that served it. Files are read newest first and no further than that memory holds,
so a process that starts on a day's log reads its last FEEDBACK_INDEX_SIZE records, not the day. The set
of files read forgets a date partition once no wait reaches it. A file that cannot be read is logged and
counted (`unreadable`), and not tried again: the log only ever shows complete files, so it stays broken.
An I/O error (an S3 request that failed, a file gone for a moment) is tried again at the next passes,
READ_ATTEMPTS in all, before the file counts as unreadable: a transient error must not lose a file's labels
(pyarrow reports some damaged files as I/O errors too: those are read READ_ATTEMPTS times, then counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from api.log_store import DATE_PREFIX, LogStore

log = logging.getLogger(__name__)

COLUMNS = ["request_id", "probability"]
READ_ATTEMPTS = 3  # reads of a file that fail with an I/O error before it counts as unreadable
VERSION_PREFIX = "model_version="


@dataclass(frozen=True)
class Waiting:
    positive: bool  # the label sent is the model's positive one
    deadline: float  # on the join's clock (monotonic)


@dataclass(frozen=True)
class Outcome:
    """What a pass settled: (request id, probability, positive) per match, and how many became unknown."""

    matched: list[tuple[str, float, bool]] = field(default_factory=list)
    unknown: int = 0


class LogJoin:
    """The items waiting for their prediction to show in the inference log, and the reader of the log."""

    def __init__(
        self,
        store: LogStore,
        *,
        wait: float,
        size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.wait, self.size, self.clock = store, wait, size, clock
        self.pending: OrderedDict[str, Waiting] = OrderedDict()  # oldest first, so deadlines ascend
        self.unreadable = 0  # log files that could not be read
        self._evicted = 0  # waiting items pushed out by newer ones, unknown at the next pass
        self._partitions: dict[str, float] = {}  # model_name=<n> -> until when an item may wait for it
        self._read: dict[str, str] = {}  # log file -> its date partition's day (YYYY-MM-DD)
        self._attempts: dict[str, tuple[int, str]] = {}  # log file -> (reads failed with an I/O error, day)
        # (file modified, its request_id and probability), oldest file first: a file read late (after an
        # I/O error) still takes its place by its time.
        self._recent: deque[tuple[int, pa.Table]] = deque()
        self._recent_rows = 0

    def add(self, request_id: str, positive: bool, partition: str) -> None:
        """Wait for `request_id`'s prediction in `partition` (model_name=<n>: any of its versions, as the
        index of the process that served it holds predictions of every version). The caller counts a second
        label for a waiting id as a duplicate, before it gets here: the first is kept."""
        deadline = self.clock() + self.wait
        self.pending[request_id] = Waiting(positive, deadline)
        self._partitions[partition] = deadline
        if len(self.pending) > self.size:
            self.pending.popitem(last=False)
            self._evicted += 1

    async def run_pass(self) -> Outcome:
        """Read the new files, match what waits, and expire what waited too long."""
        if not self.pending and not self._evicted:
            return Outcome()  # nothing to look for: unread files stay unread until something waits
        now = self.clock()
        self._partitions = {name: until for name, until in self._partitions.items() if until >= now}
        horizon = self.horizon(datetime.now(UTC))
        ids = list(self.pending)
        tables, found = await asyncio.to_thread(self._read_and_match, list(self._partitions), horizon, ids)
        self._recent = deque(_oldest_first([*self._recent, *tables]))
        self._recent_rows += sum(table.num_rows for _, table in tables)
        while self._recent_rows > self.size and len(self._recent) > 1:
            self._recent_rows -= self._recent.popleft()[1].num_rows
        self._read = {path: day for path, day in self._read.items() if day >= horizon}
        self._attempts = {path: tried for path, tried in self._attempts.items() if tried[1] >= horizon}

        matched = []
        for request_id, probability in found.items():
            waiting = self.pending.pop(request_id, None)
            if waiting is not None:  # not pushed out meanwhile
                matched.append((request_id, probability, waiting.positive))
        unknown, self._evicted = self._evicted, 0
        now = self.clock()
        while self.pending and next(iter(self.pending.values())).deadline <= now:
            self.pending.popitem(last=False)
            unknown += 1
        return Outcome(matched, unknown)

    def horizon(self, now: datetime) -> str:
        """The first day whose date partition is read: as far back as a wait reaches, and yesterday at
        least, so that a label just after midnight finds a prediction from just before."""
        return min(now - timedelta(seconds=self.wait), now - timedelta(days=1)).date().isoformat()

    def abandon(self) -> int:
        """Give up on everything waiting (the process ends): how many items that makes unknown."""
        unknown = len(self.pending) + self._evicted
        self.pending.clear()
        self._evicted = 0
        return unknown

    # ------------------------------------------------------------------ in a worker thread
    def _read_and_match(
        self, partitions: list[str], horizon: str, ids: list[str]
    ) -> tuple[list[tuple[int, pa.Table]], dict[str, float]]:
        """The new files' tables (with their time), and the probability of each id of `ids` found in them or
        in what was read before (the newest record wins, as the index keeps a reused id's latest)."""
        tables = self._read_new(partitions, horizon)
        wanted = pa.array(ids, type=pa.string())
        found: dict[str, float] = {}
        for _, table in _oldest_first([*self._recent, *tables]):
            # A probability that is no probability (a file not written by the service) is no match: the
            # online metrics' bins take only [0, 1].
            probability = table["probability"]
            valid = pc.and_(
                pc.is_finite(probability),
                pc.and_(pc.greater_equal(probability, 0.0), pc.less_equal(probability, 1.0)),
            )
            hits = table.filter(
                pc.and_(pc.is_in(table["request_id"], value_set=wanted), pc.fill_null(valid, False))
            )
            if hits.num_rows:
                found.update(
                    zip(hits["request_id"].to_pylist(), hits["probability"].to_pylist(), strict=True)
                )
        return tables, found

    def _read_new(self, partitions: list[str], horizon: str) -> list[tuple[int, pa.Table]]:
        filesystem = self.store.filesystem
        new: list[tuple[int, str, str]] = []  # (modified, path, day)
        for partition in partitions:
            try:
                new.extend(self._unread(partition, horizon))
            except OSError:  # an unreachable store: the next pass lists again
                log.exception("the feedback join could not list %s in %s", partition, self.store.location)
        new.sort(reverse=True)
        tables: list[tuple[int, pa.Table]] = []
        rows = 0
        for modified, path, day in new:
            self._read[path] = day
            if rows >= self.size:  # older than all the memory keeps: as if read and evicted
                continue
            try:
                with filesystem.open_input_file(path) as source:
                    table = pq.read_table(source, columns=COLUMNS)
                table = table.select(COLUMNS).cast(
                    pa.schema([("request_id", pa.string()), ("probability", pa.float64())])
                )
            except OSError:  # the store's error (pyarrow's I/O errors are OSErrors): try again later
                attempts = self._attempts.get(path, (0, day))[0] + 1
                self._attempts[path] = (attempts, day)
                log.exception("the feedback join could not read %s (attempt %d)", path, attempts)
                if attempts < READ_ATTEMPTS:
                    del self._read[path]
                else:
                    del self._attempts[path]
                    self.unreadable += 1
                continue
            except Exception:  # a file that is not the log's, or damaged: never the pass's end
                log.exception("the feedback join could not read %s", path)
                self.unreadable += 1
                continue
            self._attempts.pop(path, None)
            tables.append((modified, table))
            rows += table.num_rows
        tables.reverse()
        return tables

    def _unread(self, partition: str, horizon: str) -> list[tuple[int, str, str]]:
        filesystem = self.store.filesystem
        found = []
        versions = filesystem.get_file_info(
            pafs.FileSelector(self.store.path(partition), allow_not_found=True)
        )
        days = [
            day
            for version in versions
            if version.type == pafs.FileType.Directory and version.base_name.startswith(VERSION_PREFIX)
            for day in filesystem.get_file_info(pafs.FileSelector(version.path, allow_not_found=True))
        ]
        for directory in days:
            day = directory.base_name.removeprefix(DATE_PREFIX)
            # ISO days compare as text; a partition before the horizon holds no record a wait can reach.
            if directory.type != pafs.FileType.Directory or day == directory.base_name or day < horizon:
                continue
            for info in filesystem.get_file_info(pafs.FileSelector(directory.path)):
                if (
                    info.type == pafs.FileType.File
                    and info.base_name.endswith(".parquet")
                    and not info.base_name.startswith(".")
                    and info.path not in self._read
                ):
                    found.append((info.mtime_ns or 0, info.path, day))
        return found


def _oldest_first(tables: list[tuple[int, pa.Table]]) -> list[tuple[int, pa.Table]]:
    """By the files' times, in a stable sort: where a request id repeats, the newest file's record wins."""
    return sorted(tables, key=lambda entry: entry[0])
