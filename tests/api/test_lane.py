"""The fast lane (api/lane.py): the prediction routes are answered in front of Starlette's router, and a
request that reaches their documented routes through the router anyway gets the same answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.api.support import serving

PREDICTION_PATHS = ("/predict", "/predict/batch")


@pytest.fixture(scope="module")
def client(api_registry):
    with serving(api_registry.settings()) as client:
        yield client


@pytest.fixture(scope="module")
def bodies(api_registry) -> dict[str, Any]:
    rows = api_registry.rows(3)
    return {"/predict": rows[0], "/predict/batch": {"records": rows}}


def spied(monkeypatch, owner: Any, attribute: str) -> list[str]:
    """The paths of the requests that reach `owner.attribute` (an ASGI app), from now on."""
    inner = getattr(owner, attribute)
    paths: list[str] = []

    async def spy(scope, receive, send):
        if scope["type"] == "http":
            paths.append(scope["path"])
        await inner(scope, receive, send)

    monkeypatch.setattr(owner, attribute, spy)
    return paths


@pytest.mark.parametrize("layer", ["router", "middleware stack"])
def test_the_prediction_routes_never_reach_the_router_nor_fastapi_s_middleware(
    client, bodies, monkeypatch, layer
):
    """Neither Starlette's router nor the layers FastAPI wraps every request in (ServerErrorMiddleware and
    the rest): the lane answers in front of them."""
    app = client.app
    owner, attribute = (app.router, "middleware_stack") if layer == "router" else (app, "middleware_stack")
    if getattr(owner, attribute) is None:
        client.get("/health")
    reached = spied(monkeypatch, owner, attribute)
    for path in PREDICTION_PATHS:
        assert client.post(path, json=bodies[path]).status_code == 200
        assert client.post(path, json={"not": "a record"}).status_code == 422
        assert client.post(path, content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert client.get("/health").status_code == 200
    assert reached == ["/health"]


def test_an_unexpected_error_in_the_lane_is_the_service_s_500_that_names_its_request(
    api_registry, bodies, monkeypatch
):
    with serving(api_registry.settings()) as client:

        def broken(*arguments: Any) -> None:
            raise RuntimeError("a bug in scoring")

        monkeypatch.setattr(client.app.state.service, "score_one", broken)
        response = client.post("/predict", json=bodies["/predict"], headers={"x-request-id": "lane-bug"})
        assert response.status_code == 500
        assert response.json() == {"detail": "Internal Server Error", "request_id": "lane-bug"}
        assert response.headers.get_list("x-request-id") == ["lane-bug"]
        assert "a bug in scoring" not in response.text
        metrics = client.get("/metrics").text
        assert 'http_requests_total{handler="/predict",method="POST",status="5xx"} 1.0' in metrics


def through_the_router(app, path: str, body: bytes, request_id: str) -> tuple[int, dict[bytes, bytes], Any]:
    """One POST straight to the app's router, past the middleware that hands the path to the lane."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())],
        "client": ("127.0.0.1", 5000), "server": ("test", 80), "app": app,
    }  # fmt: skip
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app.router(scope, receive, send))
    start, *chunks = sent
    payload = json.loads(b"".join(chunk.get("body", b"") for chunk in chunks))
    return start["status"], dict(start["headers"]), payload


@pytest.mark.parametrize("path", PREDICTION_PATHS)
@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
def test_the_documented_route_answers_as_the_lane_does(client, bodies, path, valid):
    body = json.dumps(bodies[path] if valid else {"not": "a record"}).encode()
    headers = {"content-type": "application/json", "x-request-id": f"lane-{len(path)}-{valid}"}
    direct = client.post(path, content=body, headers=headers)
    status, routed_headers, payload = through_the_router(client.app, path, body, headers["x-request-id"])
    assert status == direct.status_code == (200 if valid else 422)
    assert routed_headers[b"content-type"] == direct.headers["content-type"].encode()
    assert int(routed_headers[b"content-length"]) == len(direct.content)
    assert payload == direct.json()  # the same request id, and the same model's answer to the same body
    assert payload["request_id"] == headers["x-request-id"]
