"""A fast decoder compiled from the request models, for the bodies that are valid.

pydantic builds the request models and stays the judge of every body: its errors are the 422 details.
Parsing a 1,000-record batch with it costs several milliseconds under the GIL, though, which caps batch
throughput. So, once per model load, `FastDecoder` translates the same models, field by field, into a
msgspec decoder that parses and checks a body about four times faster. The contract is one-way: whatever
the fast decoder accepts, pydantic accepts with the same values (tests/api/test_decoding.py checks it on
generated bodies). Whatever it rejects goes to pydantic, which either reports the errors or, where
pydantic is the more lenient of the two, accepts the body after all. A constraint the compiler does not
know means no fast decoder at all: every body goes to pydantic.
"""

from __future__ import annotations

import logging
import types
import typing
from operator import attrgetter
from typing import Annotated, Any, Literal

import annotated_types
import msgspec
from pydantic import BaseModel, Strict, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic.types import AllowInfNan

from api.predictor import columns_of

log = logging.getLogger(__name__)
Row = dict[str, Any]


class UntranslatableField(Exception):
    """A field whose type or constraint the fast decoder cannot check exactly as pydantic does."""


_NUMBER_BOUNDS = {annotated_types.Ge: "ge", annotated_types.Le: "le", annotated_types.Gt: "gt",
                  annotated_types.Lt: "lt", annotated_types.MultipleOf: "multiple_of"}  # fmt: skip


def _float(metadata: list[Any]) -> Any:
    """A float with pydantic's bounds. msgspec never reads NaN or infinity from JSON and never takes a
    bool or a string for a float, so it is at least as strict as a strict pydantic float whatever
    Strict and AllowInfNan say: only the bounds need carrying over. WithJsonSchema only documents."""
    bounds: dict[str, Any] = {}
    for item in metadata:
        if type(item) in _NUMBER_BOUNDS:
            bounds[_NUMBER_BOUNDS[type(item)]] = getattr(item, _NUMBER_BOUNDS[type(item)])
        elif not isinstance(item, Strict | AllowInfNan | WithJsonSchema):
            raise UntranslatableField(f"float constraint {item!r}")
    return Annotated[float, msgspec.Meta(**bounds)] if bounds else float


def _field_type(field: FieldInfo) -> Any:
    annotation, nullable = field.annotation, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise UntranslatableField(f"union {annotation!r}")
        annotation = members[0]
    metadata = list(field.metadata)
    if typing.get_origin(annotation) is Annotated:
        annotation, *inner = typing.get_args(annotation)
        metadata = [*inner, *metadata]
    if annotation is float:
        translated = _float(metadata)
    elif typing.get_origin(annotation) is Literal and all(
        type(value) is str for value in typing.get_args(annotation)
    ):
        if metadata:
            raise UntranslatableField(f"constraints on a Literal: {metadata!r}")
        translated = annotation
    elif annotation is str and all(isinstance(item, Strict) for item in metadata):
        translated = str
    else:
        raise UntranslatableField(f"{annotation!r} with {metadata!r}")
    return translated | None if nullable else translated


def _record_struct(record: type[BaseModel]) -> type[msgspec.Struct]:
    if record.model_config.get("extra") != "forbid":
        raise UntranslatableField("the record model does not forbid extra fields")
    fields = []
    for name, field in record.model_fields.items():
        if not field.is_required() or field.alias not in (None, name):
            raise UntranslatableField(f"{name}: optional or aliased")
        fields.append((name, _field_type(field)))
    # gc=False: records hold only floats, strings and None, so the collector need not track them.
    return msgspec.defstruct("FastRecord", fields, forbid_unknown_fields=True, gc=False)


def _records_length(batch: type[BaseModel]) -> msgspec.Meta:
    if set(batch.model_fields) != {"records"} or batch.model_config.get("extra") != "forbid":
        raise UntranslatableField("the batch model is not exactly {records: [...]}")
    min_length: int | None = None
    max_length: int | None = None
    for item in batch.model_fields["records"].metadata:
        if isinstance(item, annotated_types.MinLen):
            min_length = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            max_length = item.max_length
        else:
            raise UntranslatableField(f"records constraint {item!r}")
    return msgspec.Meta(min_length=min_length, max_length=max_length)


class FastDecoder:
    """`record(body)` gives the validated record as a dict and `batch(body)` the validated batch as a
    ColumnBatch (feature -> values), or None when pydantic must look.
    Raises UntranslatableField when a field cannot be checked exactly; the caller then uses pydantic."""

    def __init__(self, record: type[BaseModel], batch: type[BaseModel]):
        struct = _record_struct(record)
        batch_struct = msgspec.defstruct(
            "FastBatch",
            [("records", Annotated[list[struct], _records_length(batch)])],  # type: ignore[valid-type]
            forbid_unknown_fields=True,
            gc=False,
        )
        self._names = tuple(record.model_fields)
        self._record: msgspec.json.Decoder[Any] = msgspec.json.Decoder(struct)
        self._batch: msgspec.json.Decoder[Any] = msgspec.json.Decoder(batch_struct)

    def record(self, body: bytes) -> Row | None:
        try:
            return msgspec.structs.asdict(self._record.decode(body))
        except (msgspec.MsgspecError, UnicodeDecodeError):  # msgspec reports invalid UTF-8 as the latter
            return None

    def batch(self, body: bytes) -> dict[str, list[Any]] | None:
        try:
            records = self._batch.decode(body).records
        except (msgspec.MsgspecError, UnicodeDecodeError):
            return None
        return columns_of(records, self._names, attrgetter)


def compile_decoder(record: type[BaseModel], batch: type[BaseModel]) -> FastDecoder | None:
    """The fast decoder for these request models, or None when pydantic must validate every body."""
    try:
        return FastDecoder(record, batch)
    except UntranslatableField as error:
        log.warning("no fast decoder for this schema (%s): pydantic validates every request", error)
        return None
