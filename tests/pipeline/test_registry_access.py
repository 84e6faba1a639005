"""The stack's MLflow under least privilege, for real: `mlflow server --app-name basic-auth` on
PostgreSQL with stages/registry/basic_auth.ini, users and grants from stages/registry/access.py. The
pipeline registers and stages a candidate and cannot move `production`; the deployer promotes (the
copy, then the alias); the api user loads the served model and cannot register. One server for the
module: it takes 15-20 s to start."""

from __future__ import annotations

import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.linear_model import LogisticRegression

from stages.params import load_params
from stages.registry import access, open_registry, promote
from tests.support.services import mlflow_server

pytestmark = pytest.mark.slow

NAMES = load_params().mlflow
SERVED, CANDIDATES = NAMES.model_name, NAMES.candidate_model_name
ENV = {
    "MLFLOW_ADMIN_PASSWORD": "admin-password-for-tests",
    "MLFLOW_PIPELINE_PASSWORD": "pipeline-password-for-tests",
    "MLFLOW_DEPLOYER_PASSWORD": "deployer-password-for-tests",
    "MLFLOW_API_PASSWORD": "api-password-for-tests",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(
        tmp_path_factory.mktemp("auth"), admin_password=ENV["MLFLOW_ADMIN_PASSWORD"]
    ) as running:
        with pytest.MonkeyPatch.context() as patch:  # apply() logs in as the admin through the environment
            lines = access.apply(running.url, NAMES, ENV)
            again = access.apply(running.url, NAMES, ENV)  # re-runnable: everything exists now
        assert f"created registered model {SERVED}" in lines and f"registered model {SERVED} exists" in again
        assert "pipeline: EDIT on adult-income-candidates" in again
        patch.undo()
        yield running.url


@pytest.fixture
def as_user(server, monkeypatch):
    """Switch the process's MLflow identity; the clients read it from the environment per request."""

    def login(user: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ENV[f"MLFLOW_{user.upper()}_PASSWORD"])
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
        mlflow.set_tracking_uri(server)
        return MlflowClient(tracking_uri=server, registry_uri=server)

    yield login
    mlflow.set_tracking_uri(None)


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(MlflowException) as raised:
        call(*args, **kwargs)
    # copy_model_version wraps the server's answer in its own error; the 403 is in its message.
    denied = raised.value.error_code == "PERMISSION_DENIED" or "403 != 200" in str(raised.value)
    assert denied, raised.value
    return str(raised.value)


def test_an_anonymous_request_is_refused(server):
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{server}/api/2.0/mlflow/registered-models/get?name={SERVED}", timeout=10)
    raised.value.close()
    assert raised.value.code == 401


def test_the_pipeline_registers_a_candidate_and_cannot_move_production(as_user):
    client = as_user("pipeline")
    mlflow.set_experiment("access-test")
    with mlflow.start_run():
        features = np.array([[0.0], [1.0], [2.0], [3.0]])
        model = LogisticRegression().fit(features, [0, 0, 1, 1])
        logged = mlflow.sklearn.log_model(
            model, name="model", serialization_format="cloudpickle", pip_requirements=["scikit-learn"]
        )
    version = mlflow.register_model(logged.model_uri, CANDIDATES)
    client.set_registered_model_alias(CANDIDATES, "staging", version.version)

    refused(client.copy_model_version, f"models:/{CANDIDATES}/{version.version}", SERVED)
    refused(client.create_model_version, SERVED, logged.model_uri, run_id=logged.run_id)
    refused(client.delete_registered_model, SERVED)

    # The deployer can: a copy of the staged candidate, then `production` on it.
    as_user("deployer")
    assert "a copy of adult-income-candidates" in promote(open_registry())

    client = as_user("pipeline")
    production = client.get_model_version_by_alias(SERVED, "production")  # it may read it, to compare
    refused(client.set_registered_model_alias, SERVED, "production", production.version)
    refused(client.delete_registered_model_alias, SERVED, "production")
    refused(client.set_model_version_tag, SERVED, production.version, "status", "tampered")


def test_the_api_user_loads_the_served_model_and_cannot_register(as_user):
    client = as_user("api")
    model = mlflow.sklearn.load_model(f"models:/{SERVED}@production")
    assert list(model.predict(np.array([[0.0], [3.0]]))) == [0, 1]
    production = client.get_model_version_by_alias(SERVED, "production")
    refused(client.create_model_version, CANDIDATES, production.source, run_id=production.run_id)
    refused(client.set_registered_model_alias, SERVED, "production", production.version)
    refused(client.set_registered_model_alias, CANDIDATES, "staging", "1")
