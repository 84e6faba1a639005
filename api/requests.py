"""Request models built from what the model logged: its signature and its feature metadata;
and the one way a prediction body is validated against them.

Nothing about the features is written here. A new model with other columns, categories or ranges gets
a new schema when it is loaded. A body is parsed first by the fast decoder compiled from the same models
(api.fast), then, for a body it rejects, by pydantic, whose errors are the 422 details.
"""

from __future__ import annotations

import keyword
import types
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, WithJsonSchema, create_model
from pydantic_core import ErrorDetails

from api.examples import contract_example
from api.fast import FastDecoder, compile_decoder
from api.predictor import ColumnBatch, Columns, Row, columns_of
from api.rejections import issue, key_bound, oversized_objects, rejection, unknown_keys
from api.telemetry import BODY_FIELD, UNKNOWN_FIELD, Telemetry

NUMERIC_TYPES = {"double", "float", "long", "integer"}
INTEGER_TYPES = {"long", "integer"}
STRING_TYPES = {"string"}


class SchemaError(Exception):
    """The model's signature and metadata do not describe a request we can validate."""


@dataclass(frozen=True)
class RequestModels:
    columns: Columns
    record: type[BaseModel]
    batch: type[BaseModel]
    example: dict[str, Any]
    batch_example: dict[str, Any]
    feature_names: frozenset[str]
    decoder: FastDecoder | None  # None: pydantic validates every body
    max_errors: int  # issues reported per 422 (MAX_VALIDATION_ERRORS); the rest are counted

    def parse_record(self, body: bytes, telemetry: Telemetry) -> tuple[Row, bool]:
        """The validated record, keyed by feature name, and whether the fast decoder took it: then every
        value in the body has exactly its field's JSON type, and a reader of the body's JSON (the inference
        log's) finds the same values, but for the sign of an integer -0 (0.0 here) and a repeated key
        (the last one here; the log's reader refuses it). Raises RequestInvalid, its fields counted."""
        if self.decoder is not None:
            decoded = self.decoder.record(body)
            if decoded is not None:
                return decoded, True
        return dict(self._validate(self.record, body, telemetry, batch=False).__dict__), False

    def parse_batch(self, body: bytes, telemetry: Telemetry) -> ColumnBatch:
        """The validated batch, by column. Raises RequestInvalid, its fields counted."""
        if self.decoder is not None:
            decoded = self.decoder.batch(body)
            if decoded is not None:
                return decoded
        validated = self._validate(self.batch, body, telemetry, batch=True)
        return columns_of(validated.records, self.columns.order, attrgetter)

    def _validate(self, model: type[BaseModel], body: bytes, telemetry: Telemetry, batch: bool) -> Any:
        # Not valid to the fast decoder: pydantic decides, and its errors are the 422 details; unless the
        # body holds an object with more keys than can be worth checking (api/rejections.py).
        bound = key_bound(len(self.feature_names), self.max_errors)
        oversized = oversized_objects(body, bound, batch)
        if oversized:
            issues, total = unknown_keys(
                oversized, self.feature_names, {"records"} if batch else self.feature_names
            )
            telemetry.validation_errors.labels(UNKNOWN_FIELD).inc(total)
            raise rejection(issues, total, self.max_errors)
        try:
            return model.model_validate_json(body)
        except ValidationError as error:
            errors = error.errors(include_url=False, include_context=False)
            for item in errors:
                telemetry.validation_errors.labels(_field_label(item, self.feature_names)).inc()
            raise rejection(
                [issue(item) for item in errors[: self.max_errors]], len(errors), self.max_errors
            ) from None


def _field_label(error: ErrorDetails, features: frozenset[str]) -> str:
    """The bounded label for request_validation_errors_total: a feature name, records, or body."""
    for part in error["loc"]:
        if isinstance(part, str) and part != "records":
            return part if part in features else UNKNOWN_FIELD
    return "records" if "records" in error["loc"] else BODY_FIELD


def _describe_numeric(meta: dict[str, Any], nullable: bool) -> str:
    parts = [f"{meta.get('dtype', 'number')}"]
    if "min" in meta and "max" in meta:
        parts.append(f"allowed {meta['min']}…{meta['max']}")
    if "observed_min" in meta and "observed_max" in meta:
        parts.append(f"seen in training {meta['observed_min']:g}…{meta['observed_max']:g}")
    if "mean" in meta:
        parts.append(f"training mean {meta['mean']:.4g}")
    parts.append("null means missing" if nullable else "required, not null")
    return "; ".join(parts)


def _describe_categorical(meta: dict[str, Any], nullable: bool) -> str:
    allowed, seen = meta.get("allowed", []), set(meta.get("categories", []))
    unseen = [value for value in allowed if value not in seen]
    parts = [f"one of {len(allowed)} categories"]
    if unseen:
        parts.append(f"accepted but unseen in training (predicted as no category): {', '.join(unseen)}")
    parts.append("null means missing" if nullable else "required, not null")
    return "; ".join(parts)


def _field(
    name: str, column_type: str, required: bool, metadata: dict[str, Any], example: Any
) -> tuple[Any, Any]:
    numeric_meta = metadata.get("numeric", {}).get(name)
    categorical_meta = metadata.get("categorical", {}).get(name)
    meta = numeric_meta or categorical_meta or {}
    nullable = bool(meta.get("nullable", False)) or not required
    examples = [example] if example is not None or nullable else None
    if column_type in NUMERIC_TYPES:
        constraints: dict[str, Any] = {"allow_inf_nan": False}
        if numeric_meta and numeric_meta.get("min") is not None:
            constraints["ge"] = numeric_meta["min"]
        if numeric_meta and numeric_meta.get("max") is not None:
            constraints["le"] = numeric_meta["max"]
        whole = column_type in INTEGER_TYPES or str(meta.get("dtype", "")).startswith(("int", "uint"))
        documented: list[Any] = []
        if whole:
            # A whole number: 42 and 42.0 are both accepted, 42.5 is not. The document says `integer`
            # (not pydantic's `number` with `multipleOf: 1`), with integer examples.
            constraints["multiple_of"] = 1
            documented.append(WithJsonSchema(_integer_schema(numeric_meta or {})))
            examples = None if examples is None else [_whole(value) for value in examples]
        # Strict: a JSON number only; "42" and true are wrong types, not numbers.
        annotation: Any = Annotated[float, Strict(), Field(**constraints), *documented]
        description = _describe_numeric(numeric_meta or {}, nullable)
    elif column_type in STRING_TYPES:
        allowed = (categorical_meta or {}).get("allowed")
        annotation = Literal[tuple(allowed)] if allowed else Annotated[str, Strict()]
        description = _describe_categorical(categorical_meta or {}, nullable)
    else:
        raise SchemaError(f"{name}: signature type {column_type!r} is not served")
    if nullable:
        annotation = annotation | None
    # Required even when nullable: a missing key is a client bug, an explicit null is a missing value.
    return annotation, Field(..., description=description, examples=examples)


def _is_whole(name: str, metadata: dict[str, Any]) -> bool:
    return str(metadata.get("numeric", {}).get(name, {}).get("dtype", "")).startswith(("int", "uint"))


def _integer_schema(meta: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    if meta.get("min") is not None:
        schema["minimum"] = _whole(meta["min"])
    if meta.get("max") is not None:
        schema["maximum"] = _whole(meta["max"])
    return schema


def _whole(value: Any) -> Any:
    """42.0 as 42, for the document's examples; anything else as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def build_request_models(
    signature: Any, metadata: dict[str, Any], max_batch_size: int, max_validation_errors: int
) -> RequestModels:
    """`signature` is the model's `mlflow.models.ModelSignature`. The documented example is synthetic,
    built from the contract (api/examples.py), never a real row."""
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        raise SchemaError("the model has no column-based input signature")
    fields: dict[str, Any] = {}
    numeric: list[str] = []
    categorical: list[str] = []
    example = contract_example(metadata, [spec.name for spec in signature.inputs.inputs])
    for spec in signature.inputs.inputs:
        name, column_type = spec.name, str(getattr(spec.type, "name", spec.type)).lower()
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise SchemaError(f"feature {name!r} is not a valid field name")
        fields[name] = _field(name, column_type, spec.required, metadata, example.get(name))
        (numeric if column_type in NUMERIC_TYPES else categorical).append(name)
    columns = Columns(numeric=tuple(numeric), categorical=tuple(categorical))
    whole = {name for name in numeric if _is_whole(name, metadata)}
    example = {name: _whole(value) if name in whole else value for name, value in example.items()}
    config = ConfigDict(extra="forbid", json_schema_extra={"examples": [example]} if example else None)
    record = create_model("PredictionRequest", __config__=config, **fields)
    records_field = Field(
        ...,
        min_length=1,
        max_length=max_batch_size,
        description=f"1 to {max_batch_size} records; one prediction each, in order.",
    )
    batch_example: dict[str, Any] = {"records": [example]} if example else {}
    batch_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [batch_example]} if example else None
    )
    records: Any = types.GenericAlias(list, (record,))  # list[record], which mypy takes for a type
    batch = create_model("BatchPredictionRequest", __config__=batch_config, records=(records, records_field))
    decoder = compile_decoder(record, batch)
    return RequestModels(
        columns,
        record,
        batch,
        example,
        batch_example,
        frozenset(columns.order),
        decoder,
        max_validation_errors,
    )
