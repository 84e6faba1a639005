"""Shared storage against a real S3 API on loopback (moto in server mode): MLflow's artifacts in a
bucket behind the tracking server, DVC's `storage` remote pushed and pulled into a fresh clone, and one
clear line for each way the remote can be unusable. One sample-sized pipeline run serves the module."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml

from tests.support.pipeline import PipelineRun, run, trained_and_promoted
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env, wait_for_http
from tests.support.services import mlflow_server, moto_server

BUCKET = "fast-mlops"  # .dvc/config's remote url and compose's artifacts destination
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
S3_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


@dataclass(frozen=True)
class Shared:
    s3_url: str
    mlflow_url: str
    pipeline: PipelineRun


def without_s3_keys(**overrides: str) -> dict[str, str]:
    """The environment of a client of the shared store that holds no S3 keys (the api, the pipeline)."""
    env = subprocess_env()
    for name in S3_VARIABLES:
        env.pop(name, None)
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[Shared]:
    workdir = tmp_path_factory.mktemp("shared-storage")
    s3_url, server = moto_server(workdir / "moto.log")
    with server:
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **_keys()).create_bucket(
            Bucket=BUCKET
        )
        server_env = {"MLFLOW_S3_ENDPOINT_URL": s3_url, **KEYS}
        with mlflow_server(
            workdir, artifacts_destination=f"s3://{BUCKET}/mlflow", server_env=server_env
        ) as mlflow:
            # The pipeline holds no S3 keys: its artifacts go through the server (mlflow-artifacts:/).
            for name in S3_VARIABLES:
                assert name not in subprocess_env() or name.startswith("MLFLOW"), name
            pipeline = trained_and_promoted(workdir / "repo", mlflow.url)
            # What a developer commits after `dvc repro`: the clone below starts from it.
            subprocess.run(["git", "commit", "-q", "-am", "dvc.lock"], cwd=pipeline.workdir, check=True)
            yield Shared(s3_url=s3_url, mlflow_url=mlflow.url, pipeline=pipeline)


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": KEYS["AWS_SECRET_ACCESS_KEY"],
    }


def objects(s3_url: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **_keys())
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_mlflow_keeps_the_pipeline_s_artifacts_in_the_bucket(shared):
    keys = objects(shared.s3_url, "mlflow/")
    assert any(key.endswith("MLmodel") for key in keys), keys[:20]
    assert not (shared.pipeline.workdir / "mlruns").exists()


def test_the_service_loads_production_from_the_s3_backed_server_without_s3_keys(shared, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = without_s3_keys(
        MLFLOW_TRACKING_URI=shared.mlflow_url, MODEL_NAME=shared.pipeline.model_name, MODEL_ALIAS="production"
    )
    env.pop("MODEL_URI", None)
    command = [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, tmp_path / "api.log", env=env, cwd=REPO_ROOT) as process:
        wait_for_http(f"{base}/ready", 120, process)


def dvc(workdir: Path, tracking_uri: str, s3_url: str, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(MLFLOW_TRACKING_URI=tracking_uri, AWS_ENDPOINT_URL=s3_url, **KEYS)
    return subprocess.run(["dvc", *args], cwd=workdir, capture_output=True, text=True, env=env, timeout=600)


def test_dvc_push_then_pull_into_a_fresh_clone_runs_only_the_side_effect_stages(shared, tmp_path):
    pushed = dvc(shared.pipeline.workdir, shared.mlflow_url, shared.s3_url, "push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert objects(shared.s3_url, "dvc/")

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(shared.pipeline.workdir), str(clone)], check=True)
    lock = (clone / "dvc.lock").read_text()
    pulled = dvc(clone, shared.mlflow_url, shared.s3_url, "pull", "--allow-missing")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    # evaluate's and register's push: false outs stay behind, so those two run in the clone.
    assert not (clone / "data" / "predictions" / "test.parquet").exists()
    repro = dvc(clone, shared.mlflow_url, shared.s3_url, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    ran = {line.split("'")[1] for line in repro.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"evaluate", "register"}, repro.stdout
    assert (clone / "dvc.lock").read_text() == lock


def test_the_default_remote_is_storage_and_repro_never_needs_it(shared):
    config = run(shared.pipeline.workdir, shared.mlflow_url, "dvc", "remote", "default").stdout.strip()
    assert config == "storage"
    # The fixture's `dvc repro` ran with no endpoint and no keys: `make run` without a remote works.
    assert yaml.safe_load((shared.pipeline.workdir / "dvc.lock").read_text())["stages"]["register"]


def storage_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.storage"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_an_unreachable_endpoint_is_one_clear_line():
    env = without_s3_keys(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", **KEYS)
    result = storage_check(env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0], result.stderr


def test_bad_credentials_are_one_clear_line(tmp_path):
    # moto checks keys against its IAM only when told to; then any unknown key is refused.
    url, server = moto_server(tmp_path / "moto-auth.log", INITIAL_NO_AUTH_ACTION_COUNT="0")
    with server:
        env = without_s3_keys(
            AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="AKIANOTAREALKEY00000", AWS_SECRET_ACCESS_KEY="wrong"
        )
        result = storage_check(env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the credentials" in lines[0], result.stderr
