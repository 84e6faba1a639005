from __future__ import annotations

import os

import pytest

from tests.support.pipeline import PipelineRun, trained_and_promoted
from tests.support.services import MlflowServer, mlflow_server

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def mlflow_tracking_server(tmp_path_factory) -> MlflowServer:
    """One real MLflow server for the session, on its own PostgreSQL database."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(scope="session")
def trained_pipeline(tmp_path_factory) -> PipelineRun:
    """The real pipeline, once per session, on a sample, with MLflow in a temp SQLite file: a registered
    model whose only version is `production`. Read-only for tests; copy it to change it."""
    workdir = tmp_path_factory.mktemp("pipeline")
    return trained_and_promoted(workdir / "repo", f"sqlite:///{workdir / 'mlflow.db'}")
