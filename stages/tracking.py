"""Where runs and models go: one MLflow tracking store that outlives DVC's temp workspaces, and which run
trained the model that a later stage is looking at."""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.entities import Run

from stages.errors import StageError
from stages.params import load_params
from stages.workspace import output, project_root, workspace

SQLITE_PREFIX = "sqlite:///"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite at the repository root. A relative SQLite path is anchored
    at the repository root too: relative to a queued experiment's temp copy it would vanish with it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE_PREFIX}mlflow.db"
    if uri.startswith(SQLITE_PREFIX) and not Path(uri.removeprefix(SQLITE_PREFIX)).is_absolute():
        uri = f"{SQLITE_PREFIX}{project_root() / uri.removeprefix(SQLITE_PREFIX)}"
    return uri


def store_lock(uri: str) -> AbstractContextManager[object]:
    """A lock beside a SQLite store (none for a server, which serialises its own writes)."""
    if uri.startswith(SQLITE_PREFIX):
        return FileLock(f"{uri.removeprefix(SQLITE_PREFIX)}.lock")
    return nullcontext()


def configure() -> str:
    """Point MLflow at the tracking store and select the project's experiment, creating it if needed."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = load_params().mlflow.experiment
    # Parallel queued experiments may meet a new SQLite file at the same moment; both would run MLflow's
    # schema migrations and one would fail. The first one in creates the schema and the experiment.
    with store_lock(uri):
        if mlflow.get_experiment_by_name(name) is None:
            # Fixed at creation from the cwd unless given: make it absolute for a local store.
            location = (project_root() / "mlruns" / name).as_uri() if uri.startswith(SQLITE_PREFIX) else None
            mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return uri


@dataclass(frozen=True)
class TrainingRun:
    """Which MLflow run trained which model file: written by train beside its outs, not as one of them
    (a run id is new on every run, and dvc.lock must stay byte-reproducible)."""

    run_id: str
    model_sha256: str


def record_training_run(run: TrainingRun) -> None:
    file = output(load_params().paths.training_run)
    file.write_text(json.dumps(run.__dict__, indent=2) + "\n")


def training_run(model_sha256: str) -> Run:
    """The parent run that trained exactly this model file. Train's side file names it. When DVC restored
    train from its cache instead of running it (an experiment whose params match an earlier one), the side
    file is absent or names another model, and the run that first trained this file is looked up."""
    file = workspace() / load_params().paths.training_run
    if file.is_file():
        recorded = TrainingRun(**json.loads(file.read_text()))
        if recorded.model_sha256 == model_sha256:
            return mlflow.get_run(recorded.run_id)
    query = f"tags.model_sha256 = '{model_sha256}'"
    runs = mlflow.search_runs(
        filter_string=query, order_by=["attributes.start_time DESC"], max_results=1, output_format="list"
    )
    if not runs:
        raise StageError(
            f"No MLflow run at {tracking_uri()} trained the model with sha256 {model_sha256}. "
            "Re-run training against this tracking store: `dvc repro --force train`."
        )
    return runs[0]
