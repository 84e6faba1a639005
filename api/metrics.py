"""Every metric the service exports: their names live here and nowhere else in api/."""

from __future__ import annotations

from timeit import default_timer
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_fastapi_instrumentator import metrics as instrumentator_metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

# The model answers in well under a millisecond, so the buckets start at 25 µs; the instrumentator's
# defaults (0.1, 0.5, 1 s) would put every request in the first bucket.
LATENCY_BUCKETS = (0.000025, 0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015,
                   0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
PROBABILITY_BUCKETS = tuple(round(i * 0.05, 2) for i in range(1, 21))
RELOAD_RESULTS = ("success", "failure")
INFERENCE_SECONDS = "model_inference_seconds"
# request_validation_errors_total{field}: feature names come from the model, everything else is folded
# into these two so that a client cannot grow the label set.
BODY_FIELD = "body"
UNKNOWN_FIELD = "__extra__"


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """`histogram.observe` for each value, in one pass. A 1,000-row batch would otherwise spend over a
    millisecond in observe()'s per-value scan of the buckets. It fills the same per-bucket counters
    observe() fills (prometheus_client keeps them non-cumulative and sums at collect time)."""
    if values.size == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)
    # observe() puts a value in the first bucket whose bound is >= the value.
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=bounds.size)
    for index in np.flatnonzero(counts).tolist():
        histogram._buckets[index].inc(int(counts[index]))
    histogram._sum.inc(float(values.sum()))


class ServiceMetrics:
    """One registry per app, so tests can build several apps in one process."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.inference_seconds = Histogram(
            INFERENCE_SECONDS,
            "Encoding plus model time per request (one or many rows).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "predictions_total", "Predictions made, by predicted label.", ["label"], registry=registry
        )
        self.probability = Histogram(
            "prediction_probability",
            "Predicted probability of the positive label.",
            buckets=PROBABILITY_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "model_info",
            "The model being served (value is always 1).",
            ["name", "version", "alias"],
            registry=registry,
        )
        self.model_loaded = Gauge("model_loaded", "1 when a model is serving, else 0.", registry=registry)
        self.model_fast_path = Gauge(
            "model_fast_path",
            "1 when the compiled numpy predictor serves, 0 for the generic pandas path.",
            registry=registry,
        )
        self.reloads = Counter(
            "model_reloads_total",
            "Model load attempts (startup and hot reload), by result.",
            ["result"],
            registry=registry,
        )
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        self.batch_rows = Counter(
            "predict_rows_total", "Rows received in /predict/batch requests.", registry=registry
        )
        self.validation_errors = Counter(
            "request_validation_errors_total",
            "Rejected request fields (422), by feature.",
            ["field"],
            registry=registry,
        )
        self.unknown_categories = Counter(
            "unknown_category_total",
            "Accepted categorical values the model never saw in training, by feature.",
            ["feature"],
            registry=registry,
        )
        self.model_loaded.set(0)
        self.model_fast_path.set(0)

    def instrument(self, app: FastAPI) -> None:
        # Only what dashboards and alerts read: the instrumentator's default set also keeps request and
        # response size summaries and a second latency histogram, all paid for on every request.
        # http_requests_total{handler,method,status} and http_request_duration_seconds{handler,method}
        instrumentations = [
            instrumentator_metrics.requests(registry=self.registry),
            instrumentator_metrics.latency(
                buckets=LATENCY_BUCKETS, should_include_status=False, registry=self.registry
            ),
        ]
        app.add_middleware(
            _InstrumentatorMiddleware,
            should_group_status_codes=True,
            should_group_untemplated=True,  # unknown paths share handler="none"
            excluded_handlers=["^/metrics$"],
            should_instrument_requests_inprogress=True,
            inprogress_labels=True,
            instrumentations=instrumentations,
            registry=self.registry,
        )
        registry = self.registry

        # Our own route rather than the instrumentator's expose(): that one documents the answer as JSON.
        @app.get(
            "/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics"
        )
        def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _InstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, configured as above, with two changes measured on this service:

    - its in-progress gauge lives in our registry (8.1.0 creates it in the global one whatever `registry`
      says, so /metrics would not show it and a second app in one process would fail on a duplicate);
    - a leaner per-request dispatch. The stock one re-matches every route, builds a Response object and
      awaits an empty gather on every request: about 90 µs, as much as the model itself. This one caches
      the handler of each templated path and hands the same `Info` to the same instrumentations.
    """

    HANDLER_CACHE_SIZE = 1024

    def __init__(self, app: Any, **kwargs: Any) -> None:
        wanted = kwargs.pop("should_instrument_requests_inprogress", False)
        super().__init__(app, should_instrument_requests_inprogress=False, **kwargs)
        self._handlers: dict[str, tuple[str, bool]] = {}
        if wanted:
            self.should_instrument_requests_inprogress = True
            labels = ("method", "handler") if self.inprogress_labels else ()
            self.inprogress = Gauge(
                self.inprogress_name, "Number of HTTP requests in progress.", labels, registry=self.registry
            )

    def _handler(self, scope: Scope) -> tuple[str, bool]:
        """(handler label, excluded) for a request's path; only templated paths are cached, so unknown
        paths cannot grow the cache."""
        path = scope["path"]
        cached = self._handlers.get(path)
        if cached is not None:
            return cached
        handler, is_templated = self._get_handler(Request(scope))
        excluded = self._is_handler_excluded(handler, is_templated)
        if not is_templated and self.should_group_untemplated:
            handler = "none"
        if is_templated and len(self._handlers) < self.HANDLER_CACHE_SIZE:
            self._handlers[path] = (handler, excluded)
        return handler, excluded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = default_timer()
        handler, excluded = self._handler(scope)
        if excluded:
            return await self.app(scope, receive, send)
        method = scope["method"]
        inprogress = None
        if self.inprogress is not None:
            inprogress = (
                self.inprogress.labels(method, handler) if self.inprogress_labels else self.inprogress
            )
            inprogress.inc()
        status_code = 500  # what an exception that escapes the app becomes

        async def send_and_record_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            duration = max(default_timer() - started, 0.0)
            if inprogress is not None:
                inprogress.dec()
            status = str(int(status_code))
            if self.should_group_status_codes:
                status = status[0] + "xx"
            # requests() and latency() read only the method, handler, status and duration.
            info = instrumentator_metrics.Info(
                request=None,  # type: ignore[arg-type]
                response=None,
                method=method,
                modified_handler=handler,
                modified_status=status,
                modified_duration=duration,
                modified_duration_without_streaming=duration,
            )
            for instrumentation in self.instrumentations:
                instrumentation(info)
