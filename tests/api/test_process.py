"""The service as a real process over real HTTP: `python -m api` (uvicorn with uvloop and httptools), the
image's command, and plain `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

import copy
import json
import sys
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from api.process import ENVIRONMENT
from tests.api.support import PARITY_TOLERANCE
from tests.support.processes import REPO_ROOT, VENV_BIN, free_port, running, subprocess_env, wait_for_http

pytestmark = pytest.mark.slow


def post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def publish(server_url: str, model_dir, tags: dict[str, str]) -> tuple[str, str]:
    """Upload a logged model to the MLflow server (artifacts proxied by the server), register it under a
    name of its own, and point `production` at it."""
    client = MlflowClient(tracking_uri=server_url, registry_uri=server_url)
    name = f"api-process-{uuid.uuid4().hex[:8]}"
    run = client.create_run(client.create_experiment(name))
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags
    )
    client.set_registered_model_alias(name, "production", version.version)
    return name, str(version.version)


def test_the_service_process_serves_the_model_from_an_mlflow_server(
    mlflow_tracking_server, api_registry, tmp_path
):
    registered = api_registry.client().get_model_version(api_registry.model_name, api_registry.production)
    name, version = publish(
        mlflow_tracking_server.url, api_registry.model_dir(api_registry.production), dict(registered.tags)
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = subprocess_env(
        MLFLOW_TRACKING_URI=mlflow_tracking_server.url, MODEL_NAME=name, MODEL_ALIAS="production"
    )
    env.pop("MODEL_URI", None)
    command = [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, tmp_path / "api.log", env=env, cwd=REPO_ROOT) as process:
        wait_for_http(f"{base}/ready", 120, process)
        rows = api_registry.rows(50)
        expected = api_registry.expected(api_registry.production, 50)
        single = [post(f"{base}/predict", row) for row in rows[:10]]
        assert {(answer["model_name"], answer["model_version"]) for answer in single} == {(name, version)}
        np.testing.assert_allclose(
            [answer["probability"] for answer in single], expected[:10], atol=PARITY_TOLERANCE
        )
        batch = post(f"{base}/predict/batch", {"records": rows})["predictions"]
        np.testing.assert_allclose([item["probability"] for item in batch], expected, atol=PARITY_TOLERANCE)

        card = json.loads(get(f"{base}/model"))
        assert (card["name"], card["version"], card["git_sha"]) == (name, version, registered.tags["git_sha"])
        assert card["source"].startswith("mlflow-artifacts:") or card["source"].startswith("http")
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(get(f"{base}/metrics"))
            for sample in family.samples
        }
        info = frozenset({"name": name, "version": version, "alias": "production"}.items())
        assert samples[("model_info", info)] == 1
        counted = sum(value for (sample, _), value in samples.items() if sample == "predictions_total")
        assert counted == 60
    assert "Uvicorn running" in (tmp_path / "api.log").read_text()


def test_a_baked_in_model_serves_with_no_registry(api_registry, tmp_path):
    """The image's command: `--baked-model DIR` serves DIR when it holds a model and MODEL_URI is unset."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = subprocess_env()
    for variable in ("MLFLOW_TRACKING_URI", "MODEL_URI"):
        env.pop(variable, None)
    model_dir = api_registry.model_dir(api_registry.production)
    command = [
        sys.executable,
        "-m",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--baked-model",
        str(model_dir),
    ]
    with running(command, tmp_path / "api.log", env=env, cwd=REPO_ROOT) as process:
        wait_for_http(f"{base}/ready", 120, process)
        row = api_registry.rows(1)[0]
        answer = post(f"{base}/predict", row)
        assert answer["probability"] == pytest.approx(
            api_registry.expected(api_registry.production, 1)[0], abs=PARITY_TOLERANCE
        )
        assert json.loads(get(f"{base}/model"))["source"] == str(model_dir)


def test_plain_uvicorn_gets_the_process_defaults_too(api_registry, tmp_path):
    """Started the way uvicorn's own docs say, with none of the defaults in its environment: the process
    still runs one OpenMP thread (as the libraries themselves report it) and writes no access log."""
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)  # uvicorn's own, plus the service's logger to read
    log_config["loggers"]["api"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    (tmp_path / "log.json").write_text(json.dumps(log_config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = subprocess_env(MODEL_URI=str(api_registry.model_dir(api_registry.production)))
    for variable in (*ENVIRONMENT, "MODEL_NAME", "MODEL_ALIAS", "MLFLOW_TRACKING_URI"):
        env.pop(variable, None)
    command = [str(VENV_BIN / "uvicorn"), "api.main:create_app", "--factory", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-config", str(tmp_path / "log.json")]
    with running(command, tmp_path / "api.log", env=env, cwd=REPO_ROOT) as process:
        wait_for_http(f"{base}/ready", 120, process)
        for row in api_registry.rows(5):
            post(f"{base}/predict", row)
        post(f"{base}/predict/batch", {"records": api_registry.rows(20)})
        get(f"{base}/health")
    text = (tmp_path / "api.log").read_text()
    assert "Uvicorn running" in text and "serving " in text, text
    assert "HTTP/1.1" not in text, "an access log line was written"
    defaults = " ".join(f"{name}={value}" for name, value in ENVIRONMENT.items())
    assert f"process defaults: {defaults}; access log off" in text
    (loaded,) = [line for line in text.splitlines() if "verified on" in line]
    assert "openmp threads 1" in loaded and "openmp threads 2" not in loaded, loaded
