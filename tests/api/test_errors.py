"""Errors are typed and mapped to HTTP once: each ApiError answers its own status with {"detail": ...}."""

from __future__ import annotations

from typing import ClassVar

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors
from api.errors import ApiError, BodyTooLarge, ModelNotReady, RequestInvalid


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
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("path", list(RAISED))
def test_each_error_answers_its_status_and_its_detail(client, path):
    error, status = RAISED[path]
    response = client.get(path)
    assert response.status_code == status == error.status_code
    assert response.headers["content-type"] == "application/json"
    assert response.json() == error.body()
    assert response.json()["detail"] == error.detail


def test_a_422_counts_the_issues_it_leaves_out(client):
    assert client.get("/invalid").json()["errors_omitted"] == 0


def test_anything_else_is_a_plain_500(client):
    response = client.get("/bug")
    assert response.status_code == 500
    assert "boom" not in response.text
