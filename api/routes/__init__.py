"""The HTTP routes, one router per resource: predictions.py and operations.py.

Endpoints find the service where create_app put it, on `app.state`: no closures, and no `Depends`
(the prediction routes are DirectRoutes, which run no dependencies).
"""

from __future__ import annotations

from typing import cast

from starlette.requests import Request

from api.service import ModelService


def service_of(request: Request) -> ModelService:
    return cast(ModelService, request.app.state.service)
