"""The service's settings: one class, read from the environment (tests build their own instances).

The registered model's name and alias have no default here: params.yaml names them, and whoever starts
the service (the Makefile, compose, the image) passes them on. Only a fixed MODEL_URI needs neither.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.log_store import check_location, child


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", protected_namespaces=())

    mlflow_tracking_uri: str | None = Field(
        default=None, description="Registry to load from; MLflow's own default when unset."
    )
    model_name: str | None = Field(
        default=None, description="Registered model name; required unless MODEL_URI is set."
    )
    model_alias: str | None = Field(
        default=None, description="Alias to serve and to follow; required unless MODEL_URI is set."
    )
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
    max_validation_errors: int = Field(
        default=20, ge=1, description="Most issues one 422 lists; `errors_omitted` counts the rest."
    )
    request_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Deadline for a request's head (from its first byte) and for its body (from the head).",
    )
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, description="Largest request head (431 above).")
    max_concurrent_requests: int = Field(
        default=256, ge=1, description="Requests one process serves at once (503 beyond)."
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Worker processes `python -m api` starts behind its one port, under uvicorn's own "
        "supervisor; each loads the model and follows the alias. WORKERS wins: WEB_CONCURRENCY is ignored.",
    )
    keep_alive_timeout_seconds: int = Field(
        default=5, ge=1, description="How long an idle kept-alive connection stays open (whole seconds)."
    )
    api_keys_file: Path | None = Field(
        default=None, description="Key hashes that /predict, /predict/batch and /model require; unset: open."
    )
    metrics_api_keys_file: Path | None = Field(
        default=None, description="Key hashes that /metrics requires; unset: /metrics is open."
    )
    reload_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often the alias is polled for a new version."
    )
    retry_initial_seconds: float = Field(default=1.0, gt=0, description="First wait after a failed load.")
    retry_max_seconds: float = Field(default=60.0, gt=0, description="Longest wait between load attempts.")
    verify_rows: int = Field(
        default=512,
        ge=0,
        description="Synthetic rows checked, with the input example, before a pickled model serves (a "
        "model with a serving artifact is checked on the probe rows it carries).",
    )
    allow_pickle_models: bool = Field(
        default=False,
        description="Serve a model without a serving artifact by unpickling it. Unpickling runs code: only "
        "when every registry writer is trusted.",
    )
    parity_tolerance: float = Field(
        default=1e-6, gt=0, description="Largest allowed |fast - pipeline| probability on those rows."
    )
    # Drift monitoring
    drift_monitoring: bool = Field(
        default=True, description="Count every scored row into the drift window and export its PSI."
    )
    drift_window_rows: int = Field(
        default=10_000, ge=1, description="Rows the PSI figures rest on: the most recent ones."
    )
    drift_buckets: int = Field(
        default=10, ge=1, description="Time-ordered sub-windows of the drift window; the oldest ages out."
    )
    drift_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often the drift PSI and the online metrics are computed and exported.",
    )
    # Inference log and feedback
    inference_log_dir: str | None = Field(
        default=None,
        description=(
            "Where each scored record is appended as Parquet (api/inference_log.py): a directory or an "
            "s3://bucket/prefix URI; unset: no log."
        ),
    )
    inference_log_flush_seconds: float = Field(
        default=60.0, gt=0, description="A log file is closed at most this long after its first record."
    )
    inference_log_flush_rows: int = Field(
        default=100_000, ge=1, description="A log file is closed once it holds this many records."
    )
    inference_log_retention_days: int = Field(
        default=30, ge=1, description="Date partitions older than this many days are deleted."
    )
    inference_log_queue_rows: int = Field(
        default=100_000, ge=1, description="Records waiting for the writer at most; beyond, they are dropped."
    )
    feedback_log_dir: str | None = Field(
        default=None, description="Where /feedback items are appended; default: INFERENCE_LOG_DIR/feedback."
    )
    feedback_api_keys_file: Path | None = Field(
        default=None, description="Key hashes that /feedback requires instead of API_KEYS_FILE's."
    )
    feedback_index_size: int = Field(
        default=100_000, ge=1, description="Recent request ids /feedback can join to their prediction."
    )
    feedback_join_wait_seconds: float | None = Field(
        default=None,
        gt=0,
        description="With INFERENCE_LOG_DIR: how long a /feedback item whose id this process's index does not "
        "hold waits (pending) for its prediction to show in the inference log, which a background pass reads "
        "every DRIFT_INTERVAL_SECONDS; then it is unknown. Unset: 2 x INFERENCE_LOG_FLUSH_SECONDS + "
        "DRIFT_INTERVAL_SECONDS, time for the prediction's file to close (one flush interval), for a late "
        "writer or upload (another) and for the next pass to read it.",
    )
    online_metrics_window: int = Field(
        default=1000, ge=1, description="The last matched feedback items the online metrics rest on."
    )

    @field_validator(
        "model_name",
        "model_alias",
        "model_uri",
        "api_keys_file",
        "metrics_api_keys_file",
        "inference_log_dir",
        "feedback_log_dir",
        "feedback_api_keys_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `MODEL_NAME=` in an env file, or an image built without the argument, names no model either.
        return None if value == "" else value

    @field_validator("inference_log_dir", "feedback_log_dir", mode="before")
    @classmethod
    def _a_log_location(cls, value: object) -> object:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        return check_location(value) if isinstance(value, str) and value else value

    @model_validator(mode="after")
    def _names_the_model(self) -> Settings:
        missing = [
            variable
            for variable, value in (("MODEL_NAME", self.model_name), ("MODEL_ALIAS", self.model_alias))
            if value is None
        ]
        if self.model_uri is None and missing:
            raise ValueError(
                f"{' and '.join(missing)} must be set (the registered model and alias to serve), "
                "or MODEL_URI (a model to serve as is)"
            )
        return self

    @property
    def registered_model(self) -> tuple[str, str]:
        """(MODEL_NAME, MODEL_ALIAS), for the registry paths: both are set whenever MODEL_URI is not."""
        if self.model_name is None or self.model_alias is None:
            raise RuntimeError("no registered model to follow: this service serves MODEL_URI")
        return self.model_name, self.model_alias

    @property
    def target(self) -> str:
        """What this service serves, as a URI: MODEL_URI, or models:/MODEL_NAME@MODEL_ALIAS."""
        if self.model_uri is not None:
            return self.model_uri
        name, alias = self.registered_model
        return f"models:/{name}@{alias}"

    @property
    def feedback_join_wait(self) -> float:
        """FEEDBACK_JOIN_WAIT_SECONDS, else its default from the log's flush interval and the join's."""
        if self.feedback_join_wait_seconds is not None:
            return self.feedback_join_wait_seconds
        return 2 * self.inference_log_flush_seconds + self.drift_interval_seconds

    @property
    def feedback_log(self) -> str | None:
        """FEEDBACK_LOG_DIR, else INFERENCE_LOG_DIR/feedback, else None (no feedback log)."""
        if self.feedback_log_dir is not None:
            return self.feedback_log_dir
        return None if self.inference_log_dir is None else child(self.inference_log_dir, "feedback")
