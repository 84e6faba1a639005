"""GET /health, /ready, /model and /metrics: what operators, orchestrators and Prometheus ask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from api.loading import ServedModel
from api.monitoring import metrics_from_tags
from api.redaction import redact
from api.responses import ErrorResponse, HealthResponse, ModelResponse, ReadyResponse
from api.routes import service_of

router = APIRouter(tags=["operations"])


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The service's front page is its documentation."""
    return RedirectResponse("/docs")


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness",
    responses={503: {"model": ReadyResponse, "description": "No model yet; `reason` says why."}},
)
async def ready(request: Request) -> Response:
    service = service_of(request)
    model = service.model
    if model is None:
        return JSONResponse({"status": "not ready", "reason": service.not_ready_reason}, status_code=503)
    return JSONResponse(
        {"status": "ready", "model_name": model.registry.name, "model_version": model.registry.version}
    )


@router.get(
    "/model",
    response_model=ModelResponse,
    summary="The model being served",
    responses={503: {"model": ErrorResponse, "description": "No model is loaded yet."}},
)
async def model_card(request: Request) -> Response:
    service = service_of(request)
    return JSONResponse(
        {**describe(service.require_model()), "last_reload_failure": service.last_reload_failure}
    )


# Our own route, not a library's: it documents the answer as Prometheus text, not JSON. A plain `def`, so
# the collection (it reads /proc, and in multiprocess mode every worker's files) runs in a worker thread.
@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return Response(service_of(request).telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)


def describe(model: ServedModel) -> dict[str, Any]:
    """The /model card: the version's lineage from its registry tags, and how it serves."""
    registry, tags = model.registry, model.registry.tags
    return {
        "name": registry.name,
        "version": registry.version,
        "alias": registry.alias,
        "run_id": registry.run_id,
        "source": redact(registry.source) if registry.source else None,
        "git_sha": tags.get("git_sha"),
        "data_hash": tags.get("data_hash"),
        "status": tags.get("status"),
        "dvc_exp_name": tags.get("dvc_exp_name"),
        "metrics": metrics_from_tags(tags),
        "loaded_at": model.loaded_at.isoformat(),
        "predictor": model.predictor.kind,
        "fallback_reason": model.fallback_reason,
        "max_parity_error": model.max_parity_error,
        "positive_label": model.labels[1],
        "decision_threshold": model.threshold,
    }
