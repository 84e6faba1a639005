"""The pipeline loads no pickle from the registry: `register` scores the incumbents through their serving
artifacts, verified against their digest tags, so a registry writer cannot run code in CI (which runs this
stage with registry credentials)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from api.predictor import Columns
from stages.features import model_inputs
from stages.params import parse, read_yaml
from stages.serving import registered_scores
from tests.support.malicious import malicious_model
from tests.support.pipeline import run

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline_copy(trained_pipeline, tmp_path):
    """The session's pipeline workspace and registry, copied so a test may change them."""
    workdir = tmp_path / "repo"
    shutil.copytree(trained_pipeline.workdir, workdir, symlinks=True)
    shutil.copy2(trained_pipeline.tracking_uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    return workdir, f"sqlite:///{tmp_path / 'mlflow.db'}", trained_pipeline.model_name


def features_of(workdir):
    return parse(read_yaml((workdir / "params.yaml").read_text(), "params.yaml")).features


def test_an_incumbent_is_scored_from_its_serving_artifact_as_its_pipeline_scores(pipeline_copy):
    workdir, uri, name = pipeline_copy
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    production = client.get_model_version_by_alias(name, "production")
    features = features_of(workdir)
    test = model_inputs(pd.read_parquet(workdir / "data" / "prepared" / "test.parquet"), features)
    columns = Columns(numeric=tuple(features.numeric), categorical=tuple(features.categorical))
    scores = registered_scores(client, name, str(production.version), test, columns)
    # The workspace's own pickle: trusted, it is what this very pipeline wrote.
    pipeline = pickle.loads((workdir / "data" / "model" / "model.pkl").read_bytes())
    np.testing.assert_allclose(scores, pipeline.predict_proba(test)[:, 1], atol=1e-6)


def test_register_never_unpickles_a_malicious_production_version(pipeline_copy, tmp_path):
    workdir, uri, name = pipeline_copy
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    genuine = client.get_model_version_by_alias(name, "production")
    local = client.get_model_version_download_uri(name, genuine.version)
    marker = tmp_path / "pwned"
    source = malicious_model(_local_dir(local, tmp_path), tmp_path / "evil", marker)
    tags = {key: value for key, value in genuine.tags.items() if key != "training_run_id"}
    evil = client.create_model_version(name, source=source.as_uri(), tags=tags)
    client.set_registered_model_alias(name, "production", evil.version)

    result = run(workdir, uri, "python", "-m", "stages.register")
    assert not marker.exists(), f"register unpickled the registry's model:\n{result.stdout}"
    report = json.loads((workdir / "data" / "reports" / "registry.json").read_text())
    (rival,) = [item for item in report["compared_with"] if item["alias"] == "production"]
    assert rival["version"] == str(evil.version) and rival["score"] is None
    assert "serving/" in rival["error"]
    assert not report["staging"], "an incumbent that cannot be scored must block staging"


OLD_STYLE_LOG = """
import pickle, mlflow
from mlflow.models import Model
genuine = Model.load({source!r})
with mlflow.start_run():
    info = mlflow.sklearn.log_model(
        pickle.loads(open("data/model/model.pkl", "rb").read()), name="model",
        serialization_format="cloudpickle", signature=genuine.signature,
        input_example=genuine.load_input_example({source!r}), metadata=genuine.metadata,
    )
print(info.model_uri, info.model_id)
"""


def _local_dir(location: str, tmp_path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp_path / "genuine"))
    )


def test_a_version_from_before_serving_artifacts_is_scored_once_migrated(pipeline_copy, tmp_path):
    """Logged as training did before: a cloudpickle and no serving artifact. `make migrate-serving` adds
    it, on the operator's word, and from then on the version is scored without unpickling."""
    workdir, uri, name = pipeline_copy
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    genuine = client.get_model_version_by_alias(name, "production")
    genuine_dir = _local_dir(client.get_model_version_download_uri(name, genuine.version), tmp_path)
    pipeline = pickle.loads((workdir / "data" / "model" / "model.pkl").read_bytes())
    # In a process of its own, logging to the copied store, as train did before serving artifacts.
    logged = run(workdir, uri, "python", "-c", OLD_STYLE_LOG.format(source=str(genuine_dir)))
    _, model_id = logged.stdout.strip().splitlines()[-1].split()
    # MLflow looks a logged model up in the global store, whatever the client's own.
    mlflow.set_tracking_uri(uri)
    try:
        version = str(
            client.create_model_version(name, source=f"models:/{model_id}", model_id=model_id).version
        )
    finally:
        mlflow.set_tracking_uri(None)
    features = features_of(workdir)
    test = model_inputs(pd.read_parquet(workdir / "data" / "prepared" / "test.parquet"), features)
    columns = Columns(numeric=tuple(features.numeric), categorical=tuple(features.categorical))
    with pytest.raises(FileNotFoundError, match="make migrate-serving"):
        registered_scores(client, name, version, test, columns)

    result = run(workdir, uri, "python", "-m", "stages.registry", "migrate-serving", version)
    assert f"{name} v{version}" in result.stdout
    scores = registered_scores(client, name, version, test, columns)
    np.testing.assert_allclose(scores, pipeline.predict_proba(test)[:, 1], atol=1e-6)
    again = run(workdir, uri, "python", "-m", "stages.registry", "migrate-serving", version)
    assert "nothing to do" in again.stdout
