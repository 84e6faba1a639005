"""Where runs and models go: one MLflow tracking store that outlives DVC's temp workspaces."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.entities import Run

from stages.config import load_params, project_root

SQLITE_PREFIX = "sqlite:///"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite at the repository root. A relative SQLite path is anchored
    at the repository root too: relative to a queued experiment's temp copy it would vanish with it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE_PREFIX}mlflow.db"
    if uri.startswith(SQLITE_PREFIX) and not Path(uri.removeprefix(SQLITE_PREFIX)).is_absolute():
        uri = f"{SQLITE_PREFIX}{project_root() / uri.removeprefix(SQLITE_PREFIX)}"
    return uri


def configure() -> str:
    """Point MLflow at the tracking store and select the project's experiment, creating it if needed."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = load_params()["mlflow"]["experiment"]
    # Parallel queued experiments may meet a new SQLite file at the same moment; both would run MLflow's
    # schema migrations and one would fail. The first one in creates the schema and the experiment.
    lock = (
        FileLock(f"{uri.removeprefix(SQLITE_PREFIX)}.lock")
        if uri.startswith(SQLITE_PREFIX)
        else nullcontext()
    )
    with lock:
        if mlflow.get_experiment_by_name(name) is None:
            # Fixed at creation from the cwd unless given: make it absolute for a local store.
            location = (project_root() / "mlruns" / name).as_uri() if uri.startswith(SQLITE_PREFIX) else None
            mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return uri


def find_training_run(model_sha256: str) -> Run:
    """The latest parent run that trained exactly this model file. An experiment whose train stage DVC
    restored from its cache uses the run that first trained the model."""
    query = f"tags.model_sha256 = '{model_sha256}'"
    runs = mlflow.search_runs(
        filter_string=query, order_by=["attributes.start_time DESC"], max_results=1, output_format="list"
    )
    if not runs:
        raise SystemExit(
            f"No MLflow run at {tracking_uri()} trained the model with sha256 {model_sha256}. "
            "Re-run training against this tracking store: `dvc repro --force train`."
        )
    return runs[0]
