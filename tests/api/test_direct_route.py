"""DirectRoute: the endpoint is its own handler, so one it could not serve is refused when registered."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from starlette.responses import Response

from api.fast import DirectRoute


def dependency() -> int:
    return 1


async def direct(req: Request) -> Response:
    return Response(req.method.encode(), media_type="text/plain")


async def with_a_query(request: Request, q: int) -> Response:
    return Response()


async def with_a_dependency(request: Request, value: int = Depends(dependency)) -> Response:
    return Response()


async def without_the_request() -> Response:
    return Response()


async def with_a_body(payload: dict) -> Response:
    return Response()


@pytest.mark.parametrize(
    ("endpoint", "options"),
    [
        (with_a_query, {}),
        (with_a_dependency, {}),
        (without_the_request, {}),
        (with_a_body, {}),
        (direct, {"dependencies": [Depends(dependency)]}),
    ],
    ids=["a query parameter", "a Depends parameter", "no request", "a body", "route dependencies"],
)
def test_an_endpoint_it_cannot_serve_is_refused_at_registration(endpoint, options):
    router = APIRouter(route_class=DirectRoute)
    with pytest.raises(TypeError, match="exactly one parameter, the Request"):
        router.add_api_route("/direct", endpoint, methods=["POST"], **options)
    assert router.routes == []


def test_an_endpoint_taking_only_the_request_is_its_own_handler():
    app = FastAPI()
    app.router.add_api_route("/direct", direct, methods=["POST"], route_class_override=DirectRoute)
    (route,) = [route for route in app.routes if getattr(route, "path", None) == "/direct"]
    assert route.get_route_handler() is direct
    with TestClient(app) as client:
        response = client.post("/direct")
    assert (response.status_code, response.text) == (200, "POST")
    assert "/direct" in app.openapi()["paths"]
