"""Feedback: the true label of a prediction, sent back by its request id, joined to what was predicted.

The join goes through a bounded index of recent predictions, FEEDBACK_INDEX_SIZE request ids, oldest
evicted first. A batch is indexed once, under its request id, with its probabilities as they came from
the model: its record `<id>-<i>` is found by that prefix, so a 1,000-row batch costs one entry, not a
thousand strings. A prediction keeps the first label it gets; a later one is a duplicate. Every item,
matched or not, goes to the feedback log (labels often arrive after an id has left the index, and the
retraining joins the two logs), and the matched ones to the online metrics' window.

An id this process's index does not hold was often served by another worker or pod. With an inference
log, such an item is `pending` instead of unknown: api/feedback_join.py looks for it in the log, in the
background, and it is counted matched or unknown once that is settled. Without one it is unknown at once.
Each item is counted once in `feedback_total`, by its final result; a pending one when it settles. The
feedback log gets every item when it arrives, with its result then (`pending` for a waiting one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from api.feedback_join import LogJoin, Outcome
from api.inference_log import Entries, InferenceLog, LogWriter, Stream, arrow_type, timestamps
from api.loading import ServedModel
from api.online_metrics import OnlineMetrics
from api.predictor import Codes, ColumnBatch, Label, Row
from api.rejections import Location, issue, key_bound, rejection, unknown_keys
from api.request_ids import ANSWERED, ANSWERED_PATTERN
from api.telemetry import FEEDBACK_RESULTS, Telemetry

log = logging.getLogger(__name__)

MATCHED, UNKNOWN, DUPLICATE = FEEDBACK_RESULTS
PENDING = "pending"  # an answer's and the feedback log's, never a counter's: it is counted once settled
FIELDS = frozenset({"request_id", "label"})


class PredictionIndex:
    """Recent predictions by request id: a record's probability, or a batch's array of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, float | np.ndarray] = OrderedDict()
        self._ids = 0  # request ids held: 1 per record, the row count per batch

    def __len__(self) -> int:
        return self._ids

    def add(self, request_id: str, probability: float) -> None:
        self._put(request_id, probability, 1)

    def add_batch(self, request_id: str, probabilities: np.ndarray) -> None:
        self._put(request_id, probabilities, len(probabilities))

    def _put(self, request_id: str, value: float | np.ndarray, ids: int) -> None:
        entries = self._entries
        previous = entries.pop(request_id, None)  # a client that reuses its id: the latest answer counts
        if previous is not None:
            self._ids -= previous.size if isinstance(previous, np.ndarray) else 1
        entries[request_id] = value
        self._ids += ids
        # A batch larger than the whole index stays whole, alone, until the next prediction arrives.
        while self._ids > self.size and len(entries) > 1:
            _, evicted = entries.popitem(last=False)
            self._ids -= evicted.size if isinstance(evicted, np.ndarray) else 1

    def probability(self, request_id: str) -> float | None:
        """The positive-class probability predicted for this id, while it is in the index."""
        value = self._entries.get(request_id)
        if isinstance(value, float):
            return value
        prefix, _, index = request_id.rpartition("-")
        batch = self._entries.get(prefix) if index.isdigit() else None
        if isinstance(batch, np.ndarray):
            position = int(index)
            if position < batch.size and str(position) == index:  # "-01" is no record's id
                return float(batch[position])
        return None


class _Memory:
    """Request ids that already got their label, as many as the index holds (oldest forgotten first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids

    def add(self, request_id: str) -> None:
        self._ids[request_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


def _request_id(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    if not ANSWERED.fullmatch(value.encode()):
        raise PydanticCustomError(
            "request_id",
            "A request id is 1 to 128 characters of A-Z, a-z, 0-9 and ._:-, or a batch record's <id>-<i>",
        )
    return value


def _label_of(labels: tuple[Label, Label]) -> Any:
    def check(value: Any) -> Label:
        # Of the labels' own JSON type: pydantic's Literal takes true for 1 and 1.0 for 1.
        for label in labels:
            if type(value) is type(label) and value == label:
                return label
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": " or ".join(map(repr, labels))}
        )

    return Annotated[Any, PlainValidator(check), WithJsonSchema({"enum": list(labels)})]


REQUEST_ID = Annotated[
    Any,
    PlainValidator(_request_id),
    WithJsonSchema({"type": "string", "pattern": f"^{ANSWERED_PATTERN}$"}),
]


@dataclass(frozen=True)
class FeedbackModels:
    """The body /feedback takes, for one model's labels: one item or a list of 1 to MAX_BATCH_SIZE."""

    item: type[BaseModel]
    items: TypeAdapter[Any]
    max_items: int
    max_errors: int

    @classmethod
    def of(cls, labels: tuple[Label, Label], max_batch_size: int, max_errors: int) -> FeedbackModels:
        item = create_model(
            "FeedbackItem",
            __config__=ConfigDict(extra="forbid"),
            request_id=(REQUEST_ID, Field(..., description="The request_id of the prediction.")),
            label=(_label_of(labels), Field(..., description="The true label, as /predict writes labels.")),
        )
        many: Any = Annotated[list[item], Field(min_length=1, max_length=max_batch_size)]  # type: ignore[valid-type]
        items = TypeAdapter(many)
        return cls(item, items, max_batch_size, max_errors)

    def parse(self, body: bytes) -> list[tuple[str, Label]]:
        """(request id, label) per item. Raises RequestInvalid with the bounded 422 details."""
        try:
            decoded = msgspec.json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            decoded = None  # pydantic says why, in one error
        many = isinstance(decoded, list)
        bound = key_bound(len(FIELDS), self.max_errors)
        oversized: list[tuple[Location, dict[str, Any]]]
        if many:
            oversized = [
                ((i,), item) for i, item in enumerate(decoded) if isinstance(item, dict) and len(item) > bound
            ]
        else:
            oversized = [((), decoded)] if isinstance(decoded, dict) and len(decoded) > bound else []
        if oversized:
            issues, total = unknown_keys(oversized, FIELDS, FIELDS)
            raise rejection(issues, total, self.max_errors)
        try:
            if many:
                validated = self.items.validate_json(body)
            else:
                validated = [self.item.model_validate_json(body)]
        except ValidationError as error:
            errors = error.errors(include_url=False, include_context=False)
            raise rejection(
                [issue(item) for item in errors[: self.max_errors]], len(errors), self.max_errors
            ) from None
        return [(item.request_id, item.label) for item in validated]


class PredictionRecorder:
    """What the prediction routes hand over after scoring: each answer goes to the index of recent
    predictions and, when INFERENCE_LOG_DIR is set, to the inference log (enqueued, never waited for)."""

    def __init__(self, index: PredictionIndex, inference_log: InferenceLog | None) -> None:
        self.index, self.inference_log = index, inference_log

    def record(
        self,
        model: ServedModel,
        request_id: str,
        row: Row,
        label: Label,
        probability: float,
        body: bytes | None = None,
    ) -> None:
        """`body`: the request's, when its JSON holds `row` exactly as typed (RequestModels.parse_record
        says so); the inference log then keeps it rather than the values."""
        self.index.add(request_id, probability)
        if self.inference_log is not None:
            self.inference_log.record(model, request_id, row, label, probability, body)

    def batch(
        self,
        model: ServedModel,
        request_id: str,
        columns: ColumnBatch,
        probabilities: np.ndarray,
        positive: np.ndarray,
        codes: Codes | None = None,
    ) -> None:
        self.index.add_batch(request_id, probabilities)
        if self.inference_log is not None:
            self.inference_log.batch(model, request_id, columns, probabilities, positive, codes)


@dataclass(frozen=True)
class FeedbackCounts:
    matched: int
    unknown: int
    duplicate: int
    pending: int = 0


class FeedbackDesk:
    """The index of recent predictions, the feedback log and the online metrics' window, together; with
    an inference log, the join of what the index does not hold (`join`) and its background task."""

    def __init__(
        self,
        index: PredictionIndex,
        online: OnlineMetrics,
        telemetry: Telemetry,
        log: LogWriter | None,
        max_batch_size: int,
        max_errors: int,
        join: LogJoin | None = None,
        join_interval: float = 30.0,
    ) -> None:
        self.index, self.online, self.telemetry, self.log = index, online, telemetry, log
        self.join, self.join_interval = join, join_interval
        self._received = _Memory(index.size)
        self._limits = (max_batch_size, max_errors)
        self._models: tuple[ServedModel, FeedbackModels, Stream] | None = None
        self._counters = {result: telemetry.feedback.labels(result) for result in FEEDBACK_RESULTS}
        self._task: asyncio.Task[None] | None = None
        self._unreadable_counted = 0  # of join.unreadable, what feedback_join_unreadable_files_total has

    def models_of(self, model: ServedModel) -> tuple[FeedbackModels, Stream]:
        if self._models is None or self._models[0] is not model:
            self._models = (model, FeedbackModels.of(model.labels, *self._limits), _feedback_stream(model))
        return self._models[1], self._models[2]

    def take(self, model: ServedModel, items: Sequence[tuple[str, Label]]) -> FeedbackCounts:
        """Join each (request id, label) to its prediction, log it, and count it (a pending one later)."""
        positive = model.labels[1]
        join = self.join
        partition: str | None = None
        results: list[str] = []
        for request_id, label in items:
            if request_id in self._received or (join is not None and request_id in join.pending):
                results.append(DUPLICATE)
                continue
            probability = self.index.probability(request_id)
            if probability is not None:
                self._received.add(request_id)
                self.online.add(probability, label == positive)  # parse() gave it the labels' own type
                results.append(MATCHED)
            elif join is None:
                results.append(UNKNOWN)
            else:
                if partition is None:
                    partition = Stream.partition_of(model).parent.as_posix()  # the model's every version
                join.add(request_id, label == positive, partition)
                results.append(PENDING)
        tally = {result: results.count(result) for result in (*FEEDBACK_RESULTS, PENDING)}
        if tally[PENDING]:
            assert join is not None
            self.telemetry.feedback_pending.set(len(join.pending))
        for result in FEEDBACK_RESULTS:
            if tally[result]:
                self._counters[result].inc(tally[result])
        if self.log is not None:
            _, stream = self.models_of(model)
            self.log.submit(stream, len(items), (list(items), results))
        return FeedbackCounts(tally[MATCHED], tally[UNKNOWN], tally[DUPLICATE], tally[PENDING])

    def settle(self, outcome: Outcome) -> None:
        """Count what a pass of the join settled; a match goes to the online metrics as one at once does."""
        if self.join is not None:
            self.telemetry.feedback_pending.set(len(self.join.pending))
            unreadable = self.join.unreadable - self._unreadable_counted
            if unreadable:
                self.telemetry.feedback_join_unreadable.inc(unreadable)
                self._unreadable_counted += unreadable
        for request_id, probability, positive in outcome.matched:
            self._received.add(request_id)
            self.online.add(probability, positive)
        if outcome.matched:
            self._counters[MATCHED].inc(len(outcome.matched))
        if outcome.unknown:
            self._counters[UNKNOWN].inc(outcome.unknown)

    async def _run(self) -> None:
        assert self.join is not None
        while True:
            await asyncio.sleep(self.join_interval)
            try:
                self.settle(await self.join.run_pass())
            except Exception:  # a bug must cost a pass, not the join: items would wait forever, uncounted
                log.exception("a pass of the feedback join failed")

    async def start(self) -> None:
        if self.join is not None:
            self._task = asyncio.create_task(self._run(), name="feedback-join")

    async def stop(self) -> None:
        """End the join's task; what still waits is unknown, so that every item is counted once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.join is not None:
            self.settle(Outcome(unknown=self.join.abandon()))


def _feedback_stream(model: ServedModel) -> Stream:
    label_type = arrow_type(model.labels[0])
    schema = pa.schema(
        [
            ("request_id", pa.string()),
            ("time", pa.timestamp("us", tz="UTC")),
            ("label", label_type),
            ("result", pa.string()),
        ]
    )

    def build(entries: Entries) -> pa.Table:
        """Each entry holds one request's (request id, label) items and their results."""
        ids: list[str] = []
        times: list[float] = []
        labels: list[Label] = []
        results: list[str] = []
        for at, (items, outcomes) in entries:
            ids.extend(request_id for request_id, _ in items)
            labels.extend(label for _, label in items)
            times.extend([at] * len(items))
            results.extend(outcomes)
        arrays = [
            pa.array(ids, pa.string()),
            timestamps(times),
            pa.array(labels, label_type),
            pa.array(results),
        ]
        return pa.Table.from_arrays(arrays, schema=schema)

    return Stream(Stream.partition_of(model), schema, build)
