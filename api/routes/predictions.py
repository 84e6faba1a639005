"""POST /predict and /predict/batch as FastAPI documents them: their answers' models and their errors.

Their requests never reach the router: the request-metrics middleware hands them to the fast lane
(api/lane.py), which reads the body within its limit, validates it against the request models of the model
that serves right now, scores it, records it (the feedback index, the inference log: both only take a
reference) and writes the answer. The endpoints here hand a request that did reach the router to the
same lane, so that there is one implementation of each route.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.types import ASGIApp

from api.bodies import BodyDeadlines
from api.fast import DirectRoute
from api.loading import ServedModel
from api.predictor import ColumnBatch
from api.responses import BatchPredictionResponse, ErrorResponse, PredictionResponse, ValidationErrorResponse

PREDICT_PATH = "/predict"
BATCH_PATH = "/predict/batch"

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "A missing or wrong API key (when API_KEYS_FILE is set)."},
    408: {"model": ErrorResponse, "description": "The body took longer than REQUEST_READ_TIMEOUT_SECONDS."},
    415: {"model": ErrorResponse, "description": "The body is not application/json."},
    413: {"model": ErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
    422: {"model": ValidationErrorResponse, "description": "Field-level validation errors."},
    503: {"model": ErrorResponse, "description": "No model is loaded yet; the detail says why."},
}

router = APIRouter(tags=["predictions"], route_class=DirectRoute, responses=RESPONSES)


@router.post(PREDICT_PATH, response_model=PredictionResponse, summary="Predict one record")
async def predict(request: Request) -> ASGIApp:
    return cast(ASGIApp, request.app.state.lane.predict)


@router.post(
    BATCH_PATH,
    response_model=BatchPredictionResponse,
    summary="Predict up to MAX_BATCH_SIZE records, in order",
)
async def predict_batch(request: Request) -> ASGIApp:
    return cast(ASGIApp, request.app.state.lane.predict_batch)


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
