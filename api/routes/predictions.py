"""POST /predict and /predict/batch: the body read within its limit, validated against the request models
of the model that serves right now, scored, recorded (the feedback index, the inference log: both only
take a reference), and written back without FastAPI's serialisation."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from api import request_ids
from api.bodies import BodyDeadlines
from api.fast import DirectRoute
from api.feedback import PredictionRecorder
from api.loading import ServedModel
from api.predictor import Codes, ColumnBatch
from api.responses import (
    JSON,
    BatchPredictionResponse,
    ErrorResponse,
    PredictionResponse,
    ValidationErrorResponse,
    batch_body,
    prediction_body,
)
from api.routes import service_of

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "A missing or wrong API key (when API_KEYS_FILE is set)."},
    408: {"model": ErrorResponse, "description": "The body took longer than REQUEST_READ_TIMEOUT_SECONDS."},
    415: {"model": ErrorResponse, "description": "The body is not application/json."},
    413: {"model": ErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
    422: {"model": ValidationErrorResponse, "description": "Field-level validation errors."},
    503: {"model": ErrorResponse, "description": "No model is loaded yet; the detail says why."},
}

router = APIRouter(tags=["predictions"], route_class=DirectRoute, responses=RESPONSES)


# Each endpoint takes the model once and uses it throughout, so a reload in the middle of a request cannot
# pair one model's schema with another's predictor.
@router.post("/predict", response_model=PredictionResponse, summary="Predict one record")
async def predict(request: Request) -> Response:
    service = service_of(request)
    model = service.require_model()
    body = await body_deadlines_of(request).read(request, service.settings.max_body_bytes)
    row = model.requests.parse_record(body, service.telemetry)
    label, probability = service.score_one(model, row)
    registry = model.registry
    request_id = request_ids.of(request.scope)
    recorder_of(request).record(model, request_id, row, label, probability)
    answer = prediction_body(request_id, label, probability, registry.name, registry.version)
    return Response(answer, media_type=JSON)


@router.post(
    "/predict/batch",
    response_model=BatchPredictionResponse,
    summary="Predict up to MAX_BATCH_SIZE records, in order",
)
async def predict_batch(request: Request) -> Response:
    service = service_of(request)
    model = service.require_model()
    body = await body_deadlines_of(request).read(request, service.settings.max_body_bytes)
    columns = numeric_arrays(model.requests.parse_batch(body, service.telemetry), model)
    recorder = recorder_of(request)
    codes: Codes | None = {} if recorder.inference_log is not None else None
    probabilities, positive = await service.score_batch(model, columns, codes)
    registry = model.registry
    request_id = request_ids.of(request.scope)
    recorder.batch(model, request_id, columns, probabilities, positive, codes)
    answer = batch_body(request_id, registry.name, registry.version, model.labels, probabilities, positive)
    return Response(answer, media_type=JSON)


def numeric_arrays(columns: ColumnBatch, model: ServedModel) -> ColumnBatch:
    """The batch with its numeric columns as float64 arrays, None as NaN: what the predictor, the drift
    counts and the inference log each made of the lists before, converted once here (the log's writer
    thread took 20-30 µs of GIL per list column per 1,000 rows; an array it takes as it is)."""
    converted: dict[str, Any] = dict(columns)
    for name in model.requests.columns.numeric:
        converted[name] = np.array(columns[name], dtype=np.float64)
    return converted


def body_deadlines_of(request: Request) -> BodyDeadlines:
    return cast(BodyDeadlines, request.app.state.body_deadlines)


def recorder_of(request: Request) -> PredictionRecorder:
    return cast(PredictionRecorder, request.app.state.recorder)
