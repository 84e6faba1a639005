"""Errors are typed and mapped to HTTP once: each ApiError answers its own status with {"detail": ...} and
the request's id."""

from __future__ import annotations

from typing import ClassVar

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors
from api.errors import ApiError, BodyTooLarge, ModelNotReady, RequestInvalid
from api.instrumentation import RequestMetrics
from api.telemetry import Telemetry


class Teapot(ApiError):
    status_code: ClassVar[int] = 418


ISSUES = [{"type": "missing", "loc": ["body", "age"], "msg": "Field required"}]
RAISED = {
    "/not-ready": (ModelNotReady("loading models:/m@production failed"), 503),
    "/too-large": (BodyTooLarge("the body exceeds the limit of 1024 bytes"), 413),
    "/invalid": (RequestInvalid(ISSUES), 422),
    "/teapot": (Teapot("short and stout"), 418),
}


def raising(error: Exception):
    async def endpoint() -> None:
        raise error

    return endpoint


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    errors.install(app)
    for path, (error, _) in RAISED.items():
        app.add_api_route(path, raising(error))
    app.add_api_route("/bug", raising(RuntimeError("boom")))
    # As the service runs it: the request metrics in front, which name every answer (X-Request-ID).
    front = RequestMetrics(app, routes=app.router.routes, telemetry=Telemetry())
    with TestClient(front, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("path", list(RAISED))
def test_each_error_answers_its_status_and_its_detail(client, path):
    error, status = RAISED[path]
    response = client.get(path)
    assert response.status_code == status == error.status_code
    assert response.headers["content-type"] == "application/json"
    request_id = response.json()["request_id"]
    assert response.json() == {**error.body(), "request_id": request_id}
    assert response.json()["detail"] == error.detail


def test_a_422_counts_the_issues_it_leaves_out(client):
    assert client.get("/invalid").json()["errors_omitted"] == 0


def test_anything_else_is_a_plain_500_that_names_its_request(client):
    response = client.get("/bug", headers={"X-Request-ID": "trace-500"})
    assert response.status_code == 500
    assert "boom" not in response.text
    assert response.json() == {"detail": "Internal Server Error", "request_id": "trace-500"}
    assert response.headers["X-Request-ID"] == "trace-500"


def test_an_unknown_path_is_a_404_that_names_its_request(client):
    response = client.get("/nowhere", headers={"X-Request-ID": "trace-404"})
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found", "request_id": "trace-404"}
