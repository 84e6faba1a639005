"""What the service answers: the response models its OpenAPI document describes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class PredictionResponse(BaseModel):
    label: str = Field(description="The predicted label (positive when probability > 0.5).")
    probability: float = Field(ge=0, le=1, description="Probability of the positive label.")
    model_name: str
    model_version: str | None


class BatchItem(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class BatchPredictionResponse(BaseModel):
    model_name: str
    model_version: str | None
    predictions: list[BatchItem] = Field(description="One per record, in the order sent.")


class ErrorResponse(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class ValidationErrorResponse(BaseModel):
    detail: list[ValidationIssue]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = None
    model_name: str | None = None
    model_version: str | None = None


class ModelResponse(BaseModel):
    name: str
    version: str | None
    alias: str | None
    run_id: str | None
    source: str | None
    git_sha: str | None
    data_hash: str | None
    status: str | None
    dvc_exp_name: str | None
    metrics: dict[str, float] = Field(description="Test-split metrics from the version's metric.* tags.")
    loaded_at: str
    predictor: str = Field(description="fast-xgboost, fast-linear, or generic (the pandas fallback).")
    fallback_reason: str | None
