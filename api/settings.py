"""The service's settings: one class, read from the environment (tests build their own instances)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", protected_namespaces=())

    mlflow_tracking_uri: str | None = Field(
        default=None, description="Registry to load from; MLflow's own default when unset."
    )
    model_name: str = Field(default="adult-income", description="Registered model name.")
    model_alias: str = Field(default="production", description="Alias to serve and to follow.")
    model_uri: str | None = Field(
        default=None,
        description="A local model directory (or any MLflow model URI) served as is: no registry, no reload.",
    )
    host: str = Field(default="127.0.0.1", description="Interface `python -m api` binds (--host overrides).")
    port: int = Field(
        default=8000, ge=1, le=65535, description="Port `python -m api` binds (--port overrides)."
    )
    max_batch_size: int = Field(default=1000, ge=1, description="Most records in one /predict/batch.")
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, description="Largest accepted body.")
    reload_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often the alias is polled for a new version."
    )
    retry_initial_seconds: float = Field(default=1.0, gt=0, description="First wait after a failed load.")
    retry_max_seconds: float = Field(default=60.0, gt=0, description="Longest wait between load attempts.")
    verify_rows: int = Field(
        default=512,
        ge=0,
        description="Synthetic rows checked, with the input example, before a model serves.",
    )
    parity_tolerance: float = Field(
        default=1e-6, gt=0, description="Largest allowed |fast - pipeline| probability on those rows."
    )
