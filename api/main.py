"""The app factory: `uvicorn api.main:create_app --factory`, or `python -m api`.

It assembles the pieces and holds no logic of its own: the routers (api/routes/), the error mapping
(api/errors.py), the request-metrics middleware (api/instrumentation.py) and the fast lane it hands the
prediction routes to (api/lane.py), the OpenAPI document that
follows the model (api/openapi.py), and the lifespan that runs the model loader (api/service.py), the
log writers (api/inference_log.py) and the online metrics (api/online_metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api import access, errors, openapi, process
from api.bodies import BodyDeadlines
from api.feedback import FeedbackDesk, PredictionIndex, PredictionRecorder
from api.feedback_join import LogJoin
from api.inference_log import InferenceLog, LogWriter
from api.instrumentation import RequestMetrics
from api.lane import Lane
from api.log_store import LogStore
from api.online_metrics import OnlineMetrics
from api.routes import feedback, operations, predictions
from api.service import ModelService
from api.settings import Settings
from api.telemetry import Telemetry

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    service: ModelService = app.state.service
    log.info("process defaults: %s", process.describe())
    writers: list[LogWriter] = app.state.log_writers
    online: OnlineMetrics = app.state.feedback.online
    for writer in writers:
        writer.start()
    await service.start()
    await online.start()
    await app.state.feedback.start()
    try:
        # The lifespan state: uvicorn hands it to the HTTP protocol too, which counts its refusals there.
        yield {"telemetry": service.telemetry}
    finally:
        await app.state.feedback.stop()
        await online.stop()
        await service.stop()
        await app.state.body_deadlines.stop()
        for writer in writers:  # what is queued is written before the process ends
            await asyncio.to_thread(writer.stop)


class ServiceApp(FastAPI):
    """The FastAPI app with the request metrics in front of it. uvicorn calls the app; its first stop is
    RequestMetrics (api/instrumentation.py), which hands the prediction routes to the fast lane and every
    other request to FastAPI itself (`framework`): its middleware stack, exception handlers and router.
    In front, not inside: the layers FastAPI puts around every request (Starlette's ServerErrorMiddleware,
    FastAPI's exception telemetry and body limit) measured about 10 µs of a single-record /predict, which
    the lane does not need (it reads the body within its own limit and answers its own errors)."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is None:
            await super().__call__(scope, receive, send)
        else:
            await front(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    process.silence_access_log()
    telemetry = Telemetry()
    service = ModelService(settings, telemetry)
    # FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN and show a blank page offline:
    # fastapi-offline serves the same pages with the assets its wheel carries (Swagger UI 5, ReDoc 2),
    # FastAPI's "self-hosting JavaScript and CSS for docs" recipe.
    app = FastAPIOffline(
        title="fast-mlops prediction service",
        summary=f"Serves {settings.target} with a compiled fast path.",
        version="1",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry instrumentation, which this service does not use (its metrics are
        # Prometheus', api/telemetry.py): off, FastAPI skips asking OpenTelemetry for its three global
        # providers on every request (three environment lookups among them), about 6 µs of a /predict.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # fastapi-offline is a function that returns a plain FastAPI: the app becomes a ServiceApp afterwards
    # (a subclass that adds no state, only where a request goes first).
    app.__class__ = ServiceApp
    assert isinstance(app, ServiceApp)
    app.state.service = service
    app.state.body_deadlines = BodyDeadlines(settings.request_read_timeout_seconds)
    _add_recording(app, settings, service)
    _add_routes(app, predictions.router, feedback.router, operations.router)
    errors.install(app)
    posted = [
        route.path
        for route in app.router.routes
        if isinstance(route, Route) and "POST" in (route.methods or ())
    ]
    gate = access.gate_of(settings, json_routes=posted)
    app.state.lane = lane = Lane(service, app.state.recorder, app.state.body_deadlines)
    app.front = RequestMetrics(
        app.framework, routes=app.router.routes, telemetry=service.telemetry, gate=gate, answers=lane.answers
    )
    openapi.install(app, service, protected=gate.protected)
    return app


def _log_writer(
    settings: Settings, location: str | None, name: str, telemetry: Telemetry
) -> LogWriter | None:
    if location is None:
        return None
    return LogWriter(
        LogStore.of(location),
        name,
        flush_seconds=settings.inference_log_flush_seconds,
        flush_rows=settings.inference_log_flush_rows,
        retention_days=settings.inference_log_retention_days,
        max_queued_rows=settings.inference_log_queue_rows,
        written=telemetry.log_rows_written.labels(name),
        dropped=telemetry.log_dropped.labels(name),
        errors=telemetry.log_write_errors.labels(name),
    )


def _add_recording(app: FastAPI, settings: Settings, service: ModelService) -> None:
    """The index of recent predictions, the logs and the online metrics, on app.state."""
    telemetry = service.telemetry
    inference = _log_writer(settings, settings.inference_log_dir, "inference", telemetry)
    feedback_log = _log_writer(settings, settings.feedback_log, "feedback", telemetry)
    index = PredictionIndex(settings.feedback_index_size)

    def threshold() -> float | None:
        model = service.model
        return None if model is None else model.threshold

    online = OnlineMetrics(
        settings.online_metrics_window, settings.drift_interval_seconds, telemetry, threshold
    )
    app.state.log_writers = [writer for writer in (inference, feedback_log) if writer is not None]
    app.state.recorder = PredictionRecorder(index, None if inference is None else InferenceLog(inference))
    # With an inference log, what the index does not hold is looked for there (api/feedback_join.py).
    join = None
    if inference is not None:
        join = LogJoin(inference.store, wait=settings.feedback_join_wait, size=settings.feedback_index_size)
    app.state.feedback = FeedbackDesk(
        index,
        online,
        telemetry,
        feedback_log,
        settings.max_batch_size,
        settings.max_validation_errors,
        join,
        settings.drift_interval_seconds,
    )


def _add_routes(app: FastAPI, *routers: APIRouter) -> None:
    """The routers' routes, first and flat in the app's own list. The router (and the request metrics)
    try routes in order on every request, so the prediction routes come before FastAPI's docs routes.
    Flat rather than `app.include_router`: FastAPI 0.165 keeps an included router as one branch that
    resolves its routes on each request and matches twice, which measured 10-15 µs more per request
    (about 5% of a /predict). Each route already carries its router's tags, responses and route class."""
    app.router.routes[:0] = [route for router in routers for route in router.routes]
