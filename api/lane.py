"""The fast lane: POST /predict and /predict/batch answered by raw ASGI handlers, not by Starlette's router.

Measured on a 2-core machine, the routing, the Request and Response objects and the layers of middleware
FastAPI puts around its router cost about 65 µs of a single-record /predict: more than the model. So the
request-metrics middleware (api/instrumentation.py), once it has named the route, picked the request's id
and let the access gate refuse a missing key or a body that is not JSON, hands these two routes to the
handlers here instead of to the app; it counts them as it counts every other route, with the same metrics
and labels, and adds the X-Request-ID header to what they send.

A handler does what the routes did, with the same parts: the body read within its size and its deadline
from the ASGI `receive` (api/bodies.py), parsed by the request models (the msgspec decoder, pydantic for a
body it refuses, api/requests.py), scored and counted by the service (metrics, drift), recorded (the
feedback index, the inference log), and written as api/responses.py writes it, with the headers Starlette's
Response would send. An ApiError is answered by api/errors.py's handler, as the app's exception handling
would; anything else is answered with api/errors.py's 500 and raised again, as Starlette's
ServerErrorMiddleware does for a route: RequestMetrics calls the lane in front of FastAPI's middleware
(api/main.py's ServiceApp), so that none of its layers costs a prediction anything.

FastAPI still documents both routes from their models (api/routes/predictions.py), and a request that
reached them through the router anyway would be answered by these same handlers.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api import errors, request_ids
from api.bodies import BodyDeadlines
from api.errors import ApiError
from api.feedback import PredictionRecorder
from api.predictor import Codes
from api.responses import batch_body, prediction_body
from api.routes.predictions import BATCH_PATH, PREDICT_PATH, numeric_arrays
from api.service import ModelService

POST = "POST"
# What Starlette's Response(body, media_type=JSON) sends, after the length it computes.
JSON_CONTENT_TYPE = (b"content-type", b"application/json")


class Lane:
    """The handlers of the two prediction routes, for one app: its service, its recorder and its body
    deadlines, taken once rather than found on `app.state` on every request."""

    def __init__(self, service: ModelService, recorder: PredictionRecorder, deadlines: BodyDeadlines) -> None:
        self.service, self.recorder, self.deadlines = service, recorder, deadlines
        self.limit = service.settings.max_body_bytes

    @property
    def answers(self) -> dict[tuple[str, str], ASGIApp]:
        """What RequestMetrics hands to the lane: (route template, method) -> its handler."""
        return {(PREDICT_PATH, POST): self.predict, (BATCH_PATH, POST): self.predict_batch}

    # The model is taken once per request and used throughout, so a reload in the middle of one cannot
    # pair one model's schema with another's predictor.
    async def predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        try:
            model = service.require_model()
            body = await self.deadlines.received(receive, _content_length(scope["headers"]), self.limit)
            row, typed = model.requests.parse_record(body, service.telemetry)
            label, probability = service.score_one(model, row)
            registry = model.registry
            request_id = request_ids.of(scope)
            self.recorder.record(model, request_id, row, label, probability, body if typed else None)
            answer = prediction_body(request_id, label, probability, registry.name, registry.version)
        except ApiError as error:
            await _refuse(error, scope, receive, send)
            return
        except Exception as error:
            await _fail(error, scope, receive, send)
            raise
        await _send_json(send, answer)

    async def predict_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        service, recorder = self.service, self.recorder
        try:
            model = service.require_model()
            body = await self.deadlines.received(receive, _content_length(scope["headers"]), self.limit)
            columns = numeric_arrays(model.requests.parse_batch(body, service.telemetry), model)
            codes: Codes | None = {} if recorder.inference_log is not None else None
            probabilities, positive = await service.score_batch(model, columns, codes)
            registry = model.registry
            request_id = request_ids.of(scope)
            recorder.batch(model, request_id, columns, probabilities, positive, codes)
            answer = batch_body(
                request_id, registry.name, registry.version, model.labels, probabilities, positive
            )
        except ApiError as error:
            await _refuse(error, scope, receive, send)
            return
        except Exception as error:
            await _fail(error, scope, receive, send)
            raise
        await _send_json(send, answer)


def _content_length(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The first Content-Length, as Starlette's `request.headers.get` finds it (ASGI lowercases names)."""
    for name, value in headers:
        if name == b"content-length":
            return value.decode("latin-1")
    return None


async def _send_json(send: Send, body: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(body)), JSON_CONTENT_TYPE]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _fail(error: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """What Starlette's ServerErrorMiddleware does for a route's unexpected error, which the lane, in front of
    it, does for itself: api/errors.py's 500 (the caller then re-raises, so that uvicorn logs the traceback
    and RequestMetrics counts a 5xx)."""
    response = await errors.handle_unexpected(Request(scope, receive), error)
    await response(scope, receive, send)


async def _refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """The answer the app's exception handling gives an ApiError: api/errors.py's handler's."""
    response = await errors.handle(Request(scope, receive), error)
    await response(scope, receive, send)
