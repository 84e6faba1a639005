"""PostgreSQL databases, MLflow tracking servers and an S3 API (moto), started for real."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, free_port, in_ci, running, subprocess_env

POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def _admin_connection():
    import psycopg2

    try:
        connection = psycopg2.connect(POSTGRES_ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as error:
        message = f"PostgreSQL is not reachable on 127.0.0.1:5432: {error}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    connection.autocommit = True
    return connection


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database; dropped afterwards. Yields its SQLAlchemy URL."""
    name = f"mlflow_test_{uuid.uuid4().hex[:12]}"
    connection = _admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


@dataclass(frozen=True)
class MlflowServer:
    url: str
    backend_store_uri: str
    artifacts_dir: Path


@contextmanager
def mlflow_server(
    workdir: Path,
    admin_password: str | None = None,
    artifacts_destination: str | None = None,
    server_env: dict[str, str] | None = None,
) -> Iterator[MlflowServer]:
    """`mlflow server` on a fresh PostgreSQL database with a proxied artifact store. With an
    admin_password, MLflow's basic-auth app too, as compose runs it: stages/registry/basic_auth.ini with
    its user store in a second fresh database. artifacts_destination (e.g. s3://bucket/mlflow) replaces
    the local directory; server_env (the S3 endpoint and keys) reaches the server alone."""
    port = free_port()
    artifacts = workdir / "mlflow-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    with fresh_postgres_database() as backend, _auth_config(workdir, admin_password) as auth_env:
        args = [
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            artifacts_destination or str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            *(["--app-name", "basic-auth"] if auth_env else []),
        ]
        env = subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **auth_env, **(server_env or {}))
        env.pop("MLFLOW_TRACKING_URI", None)
        url = f"http://127.0.0.1:{port}"
        with running(args, workdir / "mlflow-server.log", f"{url}/health", timeout=90, env=env, cwd=workdir):
            yield MlflowServer(url=url, backend_store_uri=backend, artifacts_dir=artifacts)


@contextmanager
def _auth_config(workdir: Path, admin_password: str | None) -> Iterator[dict[str, str]]:
    """The environment of an auth-enabled server (empty without an admin password): the stack's
    basic_auth.ini with only its database_uri pointed at a fresh database."""
    if admin_password is None:
        yield {}
        return
    import configparser

    with fresh_postgres_database() as users:
        config = configparser.ConfigParser()
        config.read(REPO_ROOT / "stages" / "registry" / "basic_auth.ini")
        config["mlflow"]["database_uri"] = users
        path = workdir / "basic_auth.ini"
        with path.open("w") as file:
            config.write(file)
        yield {
            "MLFLOW_AUTH_CONFIG_PATH": str(path),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        }


def moto_server(log: Path, **env: str):
    """moto in server mode on loopback, a real S3 API: (its URL, the running process's context)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return url, running(args, log, f"{url}/moto-api/", timeout=60, env=subprocess_env(**env))
