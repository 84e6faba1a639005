"""The errors the service answers with: one type that carries its HTTP status, mapped to JSON once.

Any layer raises an `ApiError` (the service while no model serves, the body reader over the size limit,
the request models on a bad body) and `handle` turns it into `{"detail": ...}` with its status. Nothing
else catches broad exceptions: an unexpected one is a 500 from Starlette, counted as `5xx`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from starlette.responses import Response

from api.responses import error_response

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
    return error_response(error)


def install(app: FastAPI) -> None:
    """Starlette looks exception handlers up along the error's class hierarchy: one entry serves them all."""
    app.add_exception_handler(ApiError, handle)
