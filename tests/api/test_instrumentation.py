"""The request-metrics middleware on a small app of its own (no model): which handler label each request
gets, what an exception counts as, that /metrics is left out, and that unknown paths cannot grow it."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from api.instrumentation import CACHE_SIZE, RequestMetrics
from api.main import create_app
from api.settings import Settings
from api.telemetry import LATENCY_BUCKETS, Telemetry
from tests.api.support import metric


def samples_of(telemetry: Telemetry) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in telemetry.registry.collect()
        for sample in family.samples
    }


@pytest.fixture
def instrumented():
    """An app with a templated route, a failing one and /metrics, behind the middleware; the middleware
    itself, to look at its caches; and its telemetry."""
    telemetry = Telemetry()
    app = FastAPI()
    seen_in_progress: list[float] = []

    async def item(item_id: int) -> dict[str, int]:
        samples = samples_of(telemetry)
        seen_in_progress.append(metric(samples, "http_requests_inprogress", handler="/items/{item_id}"))
        return {"id": item_id}

    async def boom() -> None:
        raise RuntimeError("boom")

    async def metrics() -> str:
        return "scraped"

    app.add_api_route("/items/{item_id}", item)
    app.add_api_route("/boom", boom)
    app.add_api_route("/metrics", metrics)
    middleware = RequestMetrics(app, routes=app.router.routes, telemetry=telemetry)
    with TestClient(middleware, raise_server_exceptions=False) as client:
        yield client, middleware, telemetry, seen_in_progress


def test_a_templated_path_is_labelled_by_its_template(instrumented):
    client, _, telemetry, seen_in_progress = instrumented
    for item_id in (1, 2, 3):
        assert client.get(f"/items/{item_id}").status_code == 200
    assert client.get("/items/not-a-number").status_code == 422
    samples = samples_of(telemetry)
    labels = {"handler": "/items/{item_id}", "method": "GET"}
    assert metric(samples, "http_requests_total", **labels, status="2xx") == 3
    assert metric(samples, "http_requests_total", **labels, status="4xx") == 1
    assert metric(samples, "http_request_duration_seconds_count", **labels) == 4
    bounds = {
        float(dict(key)["le"]) for name, key in samples if name == "http_request_duration_seconds_bucket"
    }
    assert bounds == {*LATENCY_BUCKETS, float("inf")}
    assert seen_in_progress == [1, 1, 1]
    assert metric(samples, "http_requests_inprogress", **labels) == 0


def test_a_path_no_route_knows_is_none_and_is_not_cached(instrumented):
    client, middleware, telemetry, _ = instrumented
    for index in range(50):
        assert client.get(f"/no/such/path/{index}").status_code == 404
    assert client.post("/items/1").status_code == 405  # the path is known, the method is not
    samples = samples_of(telemetry)
    assert metric(samples, "http_requests_total", handler="none", method="GET", status="4xx") == 50
    assert (
        metric(samples, "http_requests_total", handler="/items/{item_id}", method="POST", status="4xx") == 1
    )
    handlers = {dict(key)["handler"] for name, key in samples if name == "http_requests_total"}
    assert handlers == {"none", "/items/{item_id}"}
    assert not any(path.startswith("/no/such") for path in middleware._handlers)


def test_the_handler_cache_is_bounded(instrumented):
    client, middleware, telemetry, _ = instrumented
    for item_id in range(CACHE_SIZE + 20):
        middleware.handler({"type": "http", "method": "GET", "path": f"/items/{item_id}", "root_path": ""})
    assert len(middleware._handlers) == CACHE_SIZE
    assert client.get(f"/items/{CACHE_SIZE + 100}").status_code == 200
    assert metric(samples_of(telemetry), "http_requests_total", handler="/items/{item_id}") == 1


def test_an_exception_that_escapes_the_app_counts_as_5xx(instrumented):
    client, _, telemetry, _ = instrumented
    assert client.get("/boom").status_code == 500
    samples = samples_of(telemetry)
    assert metric(samples, "http_requests_total", handler="/boom", method="GET", status="5xx") == 1
    assert metric(samples, "http_requests_inprogress", handler="/boom") == 0


def test_metrics_itself_is_not_counted(instrumented):
    client, _, telemetry, _ = instrumented
    assert client.get("/metrics").status_code == 200
    assert client.post("/metrics").status_code == 405
    samples = samples_of(telemetry)
    assert not [key for key in samples if ("handler", "/metrics") in key[1]]


def test_every_route_of_the_service_is_one_the_middleware_can_name():
    """main.py adds its routers flat; a route the middleware cannot name would be counted as `none`."""
    app = create_app(Settings(model_uri="/nowhere"))
    assert all(isinstance(route, (Route, Mount)) for route in app.routes)
    middleware = RequestMetrics(app, routes=app.router.routes, telemetry=Telemetry())
    for path, method in [("/predict", "POST"), ("/predict/batch", "POST"), ("/ready", "GET")]:
        assert middleware.handler({"type": "http", "method": method, "path": path, "root_path": ""}) == path
    (assets,) = [route.path for route in app.routes if isinstance(route, Mount)]
    for asset in ["swagger-ui-bundle.js", "redoc.standalone.js"]:
        scope = {"type": "http", "method": "GET", "path": f"{assets}/{asset}", "root_path": ""}
        assert middleware.handler(scope) == assets
    assert [route.path for route in app.routes][:2] == ["/predict", "/predict/batch"]
