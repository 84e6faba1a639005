"""POST /feedback: the true labels of earlier predictions, by their request ids (api/feedback.py)."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from api import request_ids
from api.fast import DirectRoute
from api.feedback import FeedbackDesk
from api.responses import FeedbackResponse, json_response
from api.routes import service_of
from api.routes.predictions import RESPONSES, body_deadlines_of

FEEDBACK_RESPONSES = {
    **RESPONSES,
    401: {
        "model": RESPONSES[401]["model"],
        "description": "A missing or wrong API key (FEEDBACK_API_KEYS_FILE's when set, else API_KEYS_FILE's).",
    },
    422: {
        **RESPONSES[422],
        "description": "Field-level validation errors: a malformed id, an unknown label.",
    },
}

router = APIRouter(tags=["feedback"], route_class=DirectRoute, responses=FEEDBACK_RESPONSES)


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    summary="Send the true label of one prediction, or of up to MAX_BATCH_SIZE",
)
async def feedback(request: Request) -> Response:
    service = service_of(request)
    model = service.require_model()
    body = await body_deadlines_of(request).read(request, service.settings.max_body_bytes)
    desk = desk_of(request)
    models, _ = desk.models_of(model)
    counts = desk.take(model, models.parse(body))
    return json_response(
        {
            "matched": counts.matched,
            "unknown": counts.unknown,
            "duplicate": counts.duplicate,
            "pending": counts.pending,
            "request_id": request_ids.of(request.scope),
        }
    )


def desk_of(request: Request) -> FeedbackDesk:
    return cast(FeedbackDesk, request.app.state.feedback)
