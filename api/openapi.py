"""The OpenAPI document that follows the served model.

The prediction routes validate bodies themselves, with the request models of the model that serves right
now (FastAPI's own body handling would freeze the schema at startup, before the model is even known), so
FastAPI cannot document their bodies. This puts them in: the served model's request schemas, with an
example taken from its input example. The document is rebuilt when another model serves.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from api.feedback import FeedbackModels
from api.loading import ServedModel
from api.responses import JSON
from api.service import ModelService

PREDICTION_PATHS = ("/predict", "/predict/batch")
FEEDBACK_PATH = "/feedback"


def with_request_bodies(document: dict[str, Any], model: ServedModel | None) -> dict[str, Any]:
    """Put the served model's request schema, and an example taken from its input example, into the spec."""
    paths = document["paths"]
    if model is None:
        placeholder = {"type": "object", "description": "The schema appears once a model is loaded."}
        for path in (*PREDICTION_PATHS, FEEDBACK_PATH):
            if path not in paths:
                continue
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
    schemas = document["components"]["schemas"]
    for response in ("PredictionResponse", "BatchItem"):
        # The answer's label is one of this model's two labels, in their own JSON type.
        label = schemas[response]["properties"]["label"]
        schemas[response]["properties"]["label"] = {
            "title": label.get("title", "Label"),
            "description": label.get("description", ""),
            "enum": list(model.labels),
        }
    return document


def with_feedback_body(document: dict[str, Any], feedback: FeedbackModels | None) -> dict[str, Any]:
    """The /feedback body for the served model's labels: one item, or a list of them."""
    paths = document["paths"]
    if feedback is None or FEEDBACK_PATH not in paths:
        return document
    _, top = models_json_schema([(feedback.item, "validation")], ref_template="#/components/schemas/{model}")
    document.setdefault("components", {}).setdefault("schemas", {}).update(top.get("$defs", {}))
    item = {"$ref": f"#/components/schemas/{feedback.item.__name__}"}
    many = {"type": "array", "items": item, "minItems": 1, "maxItems": feedback.max_items}
    paths[FEEDBACK_PATH]["post"]["requestBody"] = {
        "required": True,
        "content": {JSON: {"schema": {"anyOf": [item, many]}}},
    }
    return document


BEARER_SCHEME = "apiKey"


def with_bearer_scheme(document: dict[str, Any], protected: Collection[str]) -> dict[str, Any]:
    """Declare the API-key scheme on the routes api/access.py guards (none while keys are off)."""
    operations = [
        operation
        for path, item in document["paths"].items()
        if path in protected
        for operation in item.values()
    ]
    if not operations:
        return document
    document.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `make api-key`: `Authorization: Bearer <key>`.",
    }
    for operation in operations:
        operation["security"] = [{BEARER_SCHEME: []}]
    return document


def install(app: FastAPI, service: ModelService, protected: Collection[str] = ()) -> None:
    """`app.openapi` replaced, as FastAPI documents for extending the schema; cached per served model."""
    described: object = object()  # the model the cached document describes (none yet)

    def openapi() -> dict[str, Any]:
        nonlocal described
        model = service.model
        if app.openapi_schema is None or described is not model:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            settings = service.settings
            feedback = None
            if model is not None:
                feedback = FeedbackModels.of(
                    model.labels, settings.max_batch_size, settings.max_validation_errors
                )
            document = with_feedback_body(with_request_bodies(document, model), feedback)
            app.openapi_schema = with_bearer_scheme(document, protected)
            described = model
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
