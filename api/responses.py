"""What the service answers: the response models its OpenAPI document describes, and the bodies the
prediction routes write themselves (they skip FastAPI's serialisation, so these must match the models)."""

from __future__ import annotations

from operator import add
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from pydantic_core import to_json
from starlette.responses import Response

from api.predictor import Label

JSON = "application/json"


LABEL_DESCRIPTION = (
    "The predicted label, in the target's own JSON type: the positive one when probability > the model's "
    "decision threshold."
)


REQUEST_ID_DESCRIPTION = (
    "This answer's id: the client's X-Request-ID when well formed (1-128 of [A-Za-z0-9._:-]), else a "
    "UUID4; also in the X-Request-ID header. /feedback takes it back."
)


class PredictionResponse(BaseModel):
    request_id: str = Field(description=REQUEST_ID_DESCRIPTION)
    # The served model's two labels replace this schema in /openapi.json (api/openapi.py).
    label: Label = Field(description=LABEL_DESCRIPTION)
    probability: float = Field(ge=0, le=1, description="Probability of the positive label.")
    model_name: str
    model_version: str | None


class BatchItem(BaseModel):
    request_id: str = Field(description="This record's id: the request's, then `-` and its index from 0.")
    label: Label = Field(description=LABEL_DESCRIPTION)
    probability: float = Field(ge=0, le=1)


class BatchPredictionResponse(BaseModel):
    request_id: str = Field(description=REQUEST_ID_DESCRIPTION)
    model_name: str
    model_version: str | None
    predictions: list[BatchItem] = Field(description="One per record, in the order sent.")


class ErrorResponse(BaseModel):
    detail: str
    request_id: str = Field(description=REQUEST_ID_DESCRIPTION)


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class ValidationErrorResponse(BaseModel):
    detail: list[ValidationIssue] = Field(description="The first MAX_VALIDATION_ERRORS issues.")
    errors_omitted: int = Field(0, ge=0, description="How many more issues the body has.")
    request_id: str = Field(description=REQUEST_ID_DESCRIPTION)


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = None
    model_name: str | None = None
    model_version: str | None = None


class ReloadFailure(BaseModel):
    version: str | None = Field(description="The version the alias moved to, which was refused.")
    reason: str
    at: str = Field(description="When it was refused (ISO 8601, UTC).")


class ModelResponse(BaseModel):
    name: str
    version: str | None
    alias: str | None
    run_id: str | None
    source: str | None
    git_sha: str | None
    data_hash: str | None
    status: str | None
    dvc_exp_name: str | None
    metrics: dict[str, float] = Field(description="Test-split metrics from the version's metric.* tags.")
    loaded_at: str
    predictor: str = Field(description="fast-xgboost, fast-linear, or generic (the pandas fallback).")
    fallback_reason: str | None
    max_parity_error: float | None = Field(
        description="Largest |fast path - pipeline| probability found by the load-time check (null when "
        "the generic path serves because the fast one could not be built)."
    )
    positive_label: Label = Field(description="The label whose probability the predictions report.")
    decision_threshold: float = Field(
        gt=0, lt=1, description="A prediction is the positive label when its probability is above this."
    )
    last_reload_failure: ReloadFailure | None = Field(
        default=None,
        description="The last version the alias moved to that failed to load while this one kept serving "
        "(null once a newer version loads).",
    )


class FeedbackResponse(BaseModel):
    matched: int = Field(ge=0, description="Items joined to a prediction still in the index.")
    unknown: int = Field(
        ge=0,
        description="Items whose request id is not (or no longer) in the index; with an inference log, "
        "such an item is pending instead.",
    )
    duplicate: int = Field(ge=0, description="Items for a prediction that already has its label (kept).")
    pending: int = Field(
        ge=0,
        description="Items whose request id this process's index does not hold, left to wait for their "
        "prediction to show in the inference log (another worker's or pod's): each is counted in "
        "feedback_total later, matched once found there, unknown if FEEDBACK_JOIN_WAIT_SECONDS pass first. "
        "Always 0 without INFERENCE_LOG_DIR.",
    )
    request_id: str = Field(description=REQUEST_ID_DESCRIPTION)


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        to_json(payload, inf_nan_mode="strings"), status_code=status_code, headers=headers, media_type=JSON
    )


def error_response(error: Any, request_id: str) -> Response:
    """An api.errors.ApiError as its answer: its body (with the request's id), status and headers."""
    return json_response({**error.body(), "request_id": request_id}, error.status_code, error.headers)


def prediction_body(
    request_id: str, label: Label, probability: float, name: str, version: str | None
) -> bytes:
    """The JSON of a PredictionResponse."""
    return to_json(
        {
            "request_id": request_id,
            "label": label,
            "probability": probability,
            "model_name": name,
            "model_version": version,
        }
    )


class _ItemHeads:
    """For each label pair, `<i>","label":<label>,"probability":` for every record index i and both labels:
    what each batch item holds between its request id and its number, made once up to the largest batch
    seen (a few label pairs, one per model served)."""

    def __init__(self) -> None:
        self._heads: dict[tuple[Label, Label], np.ndarray] = {}  # shape (2, rows), bytes objects

    def first(self, labels: tuple[Label, Label], count: int) -> np.ndarray:
        heads = self._heads.get(labels)
        if heads is None or heads.shape[1] < count:
            if len(self._heads) > 8:
                self._heads.clear()
            size = max(count, 0 if heads is None else heads.shape[1])
            parts = [b'","label":' + to_json(label) + b',"probability":' for label in labels]
            heads = np.array(
                [[b"%d" % index + part for index in range(size)] for part in parts], dtype=object
            )
            self._heads[labels] = heads
        return heads[:, :count]


_ITEM_HEADS = _ItemHeads()


def batch_body(
    request_id: str,
    name: str,
    version: str | None,
    labels: tuple[Label, Label],
    probabilities: np.ndarray,
    positive: np.ndarray,
) -> bytes:
    """The JSON of a BatchPredictionResponse, byte for byte what `to_json` writes for it, in a third of the
    time for 1,000 rows: the probabilities go through `to_json` in one call, as a list, and each item is
    a prebuilt head (its index and label) and that number (no dict per row). The items are joined by
    what every item but the first starts with, `},{"request_id":"<request id>-`: a request id needs no
    escaping (api/request_ids.py), so it is written as is."""
    numbers = to_json(probabilities.tolist())[1:-1].split(b",") if probabilities.size else []
    heads = _ITEM_HEADS.first(labels, len(numbers))
    items = list(map(add, heads[positive.astype(np.intp), np.arange(len(numbers))].tolist(), numbers))
    header = to_json({"request_id": request_id, "model_name": name, "model_version": version})[:-1]
    if not items:
        return header + b',"predictions":[]}'
    opening = b'{"request_id":"' + request_id.encode("ascii") + b"-"
    return header + b',"predictions":[' + opening + (b"}," + opening).join(items) + b"}]}"
