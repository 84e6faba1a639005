"""HTTP request metrics, as a pure ASGI middleware of our own.

`http_requests_total{handler,method,status}`, `http_request_duration_seconds{handler,method}` and
`http_requests_inprogress{method,handler}`, with the names and labels dashboards and alerts read. The
handler is the template of the route the request matches, found with Starlette's public
`route.matches(scope)`: the path of a full match, else of the first route whose path matches but not its
method (a 405), else `none`, so that unknown paths cannot grow the label set. The status is grouped
(`2xx`, `4xx`, `5xx`); an exception that escapes the app counts as `5xx`. `/metrics` itself is left out.

Per request this costs two dict lookups and three metric updates: the handler of each path that names a
route is cached (bounded, so templated paths with parameters cannot grow it either), and so are the
label children of each (handler, method). Only the app's own flat list of routes is searched (main.py
does not wrap routers in `include_router`). A `Route` is named by its template and a `Mount` (the docs'
offline assets) by its prefix, so each asset file is not a label of its own.

The same pass refuses what api/access.py's Gate refuses (a missing key, a body that is not JSON) before
the app runs, and counts clients that left mid-body (the 499s of api/bodies.py) in
`http_client_disconnects_total` and bodies past their deadline (408s) in `http_body_timeouts_total`: one middleware, because each layer of ASGI middleware costs a /predict
measurably. It also picks each request's id (api/request_ids.py), keeps it in the scope for the routes
and error handlers, and adds it to every answer as the `X-Request-ID` header.

A route may be answered here rather than by the app (`answers`, by handler and method): its requests go
through all of the above, then to that ASGI app instead of the app's inner middleware and router. The
prediction routes are answered so, by the fast lane's handlers (api/lane.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from time import perf_counter

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import request_ids
from api.access import Gate
from api.errors import CLIENT_DISCONNECTED, REQUEST_TIMEOUT
from api.responses import error_response
from api.telemetry import Telemetry

UNMATCHED = "none"
CACHE_SIZE = 1024


class _Series:
    """The label children of one (handler, method), resolved once."""

    __slots__ = ("_by_status", "_handler", "_method", "_requests", "answer", "duration", "in_progress")

    def __init__(self, telemetry: Telemetry, handler: str, method: str, answer: ASGIApp | None) -> None:
        self.answer = answer  # what answers these requests instead of the app, if anything
        self.in_progress: Gauge = telemetry.http_in_progress.labels(method, handler)
        self.duration: Histogram = telemetry.http_duration.labels(handler, method)
        self._requests, self._handler, self._method = telemetry.http_requests, handler, method
        self._by_status: dict[int, Counter] = {}  # at most the few hundred HTTP status codes

    def requests(self, status: int) -> Counter:
        child = self._by_status.get(status)
        if child is None:
            child = self._requests.labels(self._handler, self._method, f"{status // 100}xx")
            self._by_status[status] = child
        return child


class RequestMetrics:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        telemetry: Telemetry,
        gate: Gate | None = None,
        excluded: Collection[str] = ("/metrics",),
        answers: Mapping[tuple[str, str], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.answers = dict(answers or {})  # (handler, method) -> the ASGI app that answers it instead
        self.gate = gate or Gate({})
        self.routes = routes  # the app's own list, read at request time: routes added later count too
        self.telemetry = telemetry
        self.excluded = frozenset(excluded)
        self._handlers: dict[str, str] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._worker = telemetry.worker_requests  # multiprocess mode only

    def handler(self, scope: Scope) -> str:
        """The handler label of a request: its route's template, or `none`."""
        path = scope["path"]
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._match(scope)
            if handler != UNMATCHED and len(self._handlers) < CACHE_SIZE:
                self._handlers[path] = handler
        return handler

    def _match(self, scope: Scope) -> str:
        partial = None
        for route in self.routes:
            if not isinstance(route, (Route, Mount)):
                continue
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route.path
        return partial or UNMATCHED

    def _series_for(self, handler: str, method: str) -> _Series:
        key = (handler, method)
        series = self._series.get(key)
        if series is None:
            series = _Series(self.telemetry, handler, method, self.answers.get(key))
            if len(self._series) < CACHE_SIZE:
                self._series[key] = series
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = self.handler(scope)
        request_id = scope[request_ids.SCOPE_KEY] = request_ids.from_headers(scope["headers"])
        id_header = (request_ids.HEADER_KEY, request_id.encode("ascii"))
        excluded = handler in self.excluded
        series = None if excluded else self._series_for(handler, scope["method"])
        app = self.app if series is None or series.answer is None else series.answer
        if handler != UNMATCHED:
            refused = self.gate.refusal(handler, scope["method"], scope["headers"])
            if refused is not None:
                app = error_response(refused, request_id)
        status = 500  # what an exception that escapes the app becomes

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        if series is None:
            await app(scope, receive, send_with_id)
            return
        started = perf_counter()
        series.in_progress.inc()
        try:
            await app(scope, receive, send_with_id)
        finally:
            duration = perf_counter() - started
            series.in_progress.dec()
            series.requests(status).inc()
            series.duration.observe(duration)
            if self._worker is not None:
                self._worker.inc()
            if status == CLIENT_DISCONNECTED:
                self.telemetry.client_disconnects.inc()
            elif status == REQUEST_TIMEOUT:
                self.telemetry.body_timeouts.inc()
