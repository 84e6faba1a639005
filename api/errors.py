"""The errors the service answers with: one type that carries its HTTP status, mapped to JSON once.

Any layer raises an `ApiError` (the service while no model serves, the body reader over the size limit,
the request models on a bad body) and `handle` turns it into `{"detail": ..., "request_id": ...}` with
its status. Starlette's own 404 and 405 get the same shape. Nothing else catches broad exceptions: an
unexpected one is still Starlette's 500 (logged, counted as `5xx`), only answered in that shape too, so
that it names its request (api/request_ids.py).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from api import request_ids
from api.responses import error_response, json_response

log = logging.getLogger(__name__)
# nginx's "client closed request": not a server error, so it is counted in the 4xx class.
CLIENT_DISCONNECTED = 499
REQUEST_TIMEOUT = 408


class ApiError(Exception):
    status_code: ClassVar[int] = 500
    headers: dict[str, str] | None = None

    def __init__(self, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class ModelNotReady(ApiError):
    """No model serves yet; the detail says why."""

    status_code = 503


class BodyTooLarge(ApiError):
    status_code = 413


class ClientDisconnected(ApiError):
    """The client left before its body was read: nobody will read the answer, and it is no server error."""

    status_code = CLIENT_DISCONNECTED


class RequestTimeout(ApiError):
    """The body did not arrive within REQUEST_READ_TIMEOUT_SECONDS of the head: answered, then closed."""

    status_code = REQUEST_TIMEOUT

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers = {"Connection": "close"}


class RequestInvalid(ApiError):
    """The body failed validation; the detail lists one issue per bad field, up to MAX_VALIDATION_ERRORS
    of them, and `errors_omitted` counts the rest."""

    status_code = 422

    def __init__(self, detail: list[dict[str, Any]], errors_omitted: int = 0) -> None:
        super().__init__(detail)
        self.errors_omitted = errors_omitted

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "errors_omitted": self.errors_omitted}


async def handle(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)  # registered for ApiError only
    if isinstance(error, ClientDisconnected):
        log.info("%s %s: the client disconnected mid-body", request.method, request.url.path)
    return error_response(error, request_ids.of(request.scope))


async def handle_http(request: Request, error: Exception) -> Response:
    """Starlette's routing errors (404, 405), as its own handler writes them plus the request id."""
    assert isinstance(error, HTTPException)
    if error.status_code in {204, 304}:  # no body allowed
        return Response(status_code=error.status_code, headers=error.headers)
    body = {"detail": error.detail, "request_id": request_ids.of(request.scope)}
    return json_response(body, error.status_code, None if error.headers is None else dict(error.headers))


async def handle_unexpected(request: Request, error: Exception) -> Response:
    """Starlette's 500, with a body that names the request (the request metrics in front of the app add
    the X-Request-ID header, as to every answer). Starlette re-raises the error afterwards, so it is still
    logged with its traceback."""
    body = {"detail": "Internal Server Error", "request_id": request_ids.of(request.scope)}
    return json_response(body, 500)


def install(app: FastAPI) -> None:
    """Starlette looks exception handlers up along the error's class hierarchy: one entry serves them all."""
    app.add_exception_handler(ApiError, handle)
    app.add_exception_handler(HTTPException, handle_http)
    app.add_exception_handler(Exception, handle_unexpected)
