"""The errors the service answers with: one type that carries its HTTP status, mapped to JSON once.

Any layer raises an `ApiError` (the service while no model serves, the body reader over the size limit,
the request models on a bad body) and `handle` turns it into `{"detail": ...}` with its status. Nothing
else catches broad exceptions: an unexpected one is a 500 from Starlette, counted as `5xx`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from starlette.responses import Response

from api.responses import json_response


class ApiError(Exception):
    status_code: ClassVar[int] = 500

    def __init__(self, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail


class ModelNotReady(ApiError):
    """No model serves yet; the detail says why."""

    status_code = 503


class BodyTooLarge(ApiError):
    status_code = 413


class RequestInvalid(ApiError):
    """The body failed validation; the detail lists one issue per bad field."""

    status_code = 422


async def handle(_: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)  # registered for ApiError only
    return json_response({"detail": error.detail}, error.status_code)


def install(app: FastAPI) -> None:
    """Starlette looks exception handlers up along the error's class hierarchy: one entry serves them all."""
    app.add_exception_handler(ApiError, handle)
