"""The FastAPI app: routes, error mapping and the OpenAPI document that follows the served model.

Prediction routes read the raw body and validate it with the request models of the model that serves
right now: first with the fast decoder compiled from them (api.decoding), then, for a body it rejects,
with pydantic, whose errors are the 422 details. FastAPI's own body handling would freeze the schema at
startup, before the model is even known.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from operator import attrgetter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from pydantic_core import to_json

from api.loading import ServedModel
from api.metrics import BODY_FIELD, UNKNOWN_FIELD, ServiceMetrics
from api.predictor import columns_of
from api.responses import (
    BatchPredictionResponse,
    ErrorResponse,
    HealthResponse,
    ModelResponse,
    PredictionResponse,
    ReadyResponse,
    ValidationErrorResponse,
    batch_body,
)
from api.service import ModelNotReady, ModelService
from api.settings import Settings

JSON = "application/json"
MAX_ECHOED_INPUT = 200


# ---------------------------------------------------------------------------------------------- errors
class BodyTooLarge(Exception):
    pass


class RequestInvalid(Exception):
    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors


def _issue(error: dict[str, Any]) -> dict[str, Any]:
    issue = {"type": error["type"], "loc": ["body", *error["loc"]], "msg": error["msg"]}
    value = error.get("input")
    if (
        value is None
        or isinstance(value, bool | int | float)
        or (isinstance(value, str) and len(value) <= MAX_ECHOED_INPUT)
    ):
        issue["input"] = value  # dicts, lists and long strings (a whole body) are not echoed back
    return issue


def _field_label(error: dict[str, Any], features: set[str]) -> str:
    """The bounded label for request_validation_errors_total: a feature name, records, or body."""
    for part in error["loc"]:
        if isinstance(part, str) and part != "records":
            return part if part in features else UNKNOWN_FIELD
    return "records" if "records" in error["loc"] else BODY_FIELD


def _json(payload: Any, status_code: int = 200) -> Response:
    return Response(to_json(payload, inf_nan_mode="strings"), status_code=status_code, media_type=JSON)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validate(model_class: type[BaseModel], body: bytes, metrics: ServiceMetrics, features: set[str]) -> Any:
    try:
        return model_class.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_context=False)
        for item in errors:
            metrics.validation_errors.labels(_field_label(item, features)).inc()
        raise RequestInvalid([_issue(item) for item in errors]) from None


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself. FastAPI's handler would
    solve dependencies and serialise a return value for it, about 30 µs of a 200 µs request, with nothing
    to do; here the endpoint is the handler. It stays an APIRoute, so the OpenAPI document lists it with
    its response models as usual."""

    def get_route_handler(self) -> Any:
        return self.endpoint


# ---------------------------------------------------------------------------------------------- OpenAPI
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "The body is larger than MAX_BODY_BYTES."},
    422: {"model": ValidationErrorResponse, "description": "Field-level validation errors."},
    503: {"model": ErrorResponse, "description": "No model is loaded yet; the detail says why."},
}


def _with_request_bodies(document: dict[str, Any], model: ServedModel | None) -> dict[str, Any]:
    """Put the served model's request schema, and an example taken from its input example, into the spec."""
    paths = document["paths"]
    if model is None:
        placeholder = {"type": "object", "description": "The schema appears once a model is loaded."}
        for path in ("/predict", "/predict/batch"):
            paths[path]["post"]["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": placeholder}},
            }
        return document
    requests = model.requests
    _, top = models_json_schema(
        [(requests.record, "validation"), (requests.batch, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(top.get("$defs", {}))
    for path, schema_name, example in (
        ("/predict", requests.record.__name__, requests.example),
        ("/predict/batch", requests.batch.__name__, requests.batch_example),
    ):
        content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        if example:
            content["example"] = example
        paths[path]["post"]["requestBody"] = {"required": True, "content": {JSON: content}}
    return document


# ---------------------------------------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    def invalidate_openapi(_: ServedModel) -> None:
        app.openapi_schema = None  # the next /openapi.json describes the new model

    service = ModelService(settings, metrics, on_swap=invalidate_openapi)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="fast-mlops prediction service",
        summary=f"Serves models:/{settings.model_name}@{settings.model_alias} with a compiled fast path.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    metrics.instrument(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            app.openapi_schema = _with_request_bodies(document, service.model)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ModelNotReady)
    async def not_ready(_: Request, error: ModelNotReady) -> Response:
        return _json({"detail": str(error)}, 503)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, error: BodyTooLarge) -> Response:
        return _json({"detail": str(error)}, 413)

    @app.exception_handler(RequestInvalid)
    async def invalid(_: Request, error: RequestInvalid) -> Response:
        return _json({"detail": error.errors}, 422)

    async def parse(request: Request, batch: bool) -> tuple[ServedModel, Any]:
        """The model that answers and the body validated against that same model's schema, so a reload
        between the two cannot pair one model's schema with another's predictor. What comes back is a
        dict for /predict and a ColumnBatch for /predict/batch."""
        model = service.require_model()
        body = await _read_body(request, settings.max_body_bytes)
        requests = model.requests
        if requests.fast is not None:
            decoded = requests.fast.batch(body) if batch else requests.fast.record(body)
            if decoded is not None:
                return model, decoded
        # Not valid to the fast decoder: pydantic decides, and its errors are the 422 details.
        if batch:
            validated = _validate(requests.batch, body, metrics, requests.feature_names)
            return model, columns_of(validated.records, requests.columns.order, attrgetter)
        return model, _validate(requests.record, body, metrics, requests.feature_names).__dict__

    def prediction_route(path: str, **documentation: Any) -> Any:
        def register(endpoint: Any) -> Any:
            app.router.add_api_route(
                path,
                endpoint,
                methods=["POST"],
                responses=PREDICT_RESPONSES,
                tags=["predictions"],
                route_class_override=DirectRoute,
                **documentation,
            )
            return endpoint

        return register

    @prediction_route("/predict", response_model=PredictionResponse, summary="Predict one record")
    async def predict(request: Request) -> Response:
        model, row = await parse(request, batch=False)
        label, probability = service.predict_one(model, row)
        registry = model.registry
        return _json(
            {
                "label": label,
                "probability": probability,
                "model_name": registry.name,
                "model_version": registry.version,
            }
        )

    @prediction_route(
        "/predict/batch",
        response_model=BatchPredictionResponse,
        summary="Predict up to MAX_BATCH_SIZE records, in order",
    )
    async def predict_batch(request: Request) -> Response:
        model, columns = await parse(request, batch=True)
        probabilities, positive = await service.predict(model, columns)
        registry = model.registry
        body = batch_body(registry.name, registry.version, model.labels, probabilities, positive)
        return Response(body, media_type=JSON)

    @app.get("/health", response_model=HealthResponse, tags=["operations"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        response_model=ReadyResponse,
        tags=["operations"],
        summary="Readiness",
        responses={503: {"model": ReadyResponse, "description": "No model yet; `reason` says why."}},
    )
    async def ready() -> Response:
        model = service.model
        if model is None:
            return JSONResponse({"status": "not ready", "reason": service.not_ready_reason}, status_code=503)
        return JSONResponse(
            {"status": "ready", "model_name": model.registry.name, "model_version": model.registry.version}
        )

    @app.get(
        "/model",
        response_model=ModelResponse,
        tags=["operations"],
        summary="The model being served",
        responses={503: {"model": ErrorResponse, "description": "No model is loaded yet."}},
    )
    async def model_card() -> Response:
        return JSONResponse(service.require_model().describe())

    # Prediction routes first: the router and the instrumentator both try routes in order on every request.
    app.router.routes.sort(key=lambda route: not getattr(route, "path", "").startswith("/predict"))
    return app
