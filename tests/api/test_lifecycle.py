"""Startup without a model, hot reload when the alias moves, a failed reload, a local model, the fallback."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from sklearn.base import clone
from sklearn.preprocessing import MinMaxScaler

from tests.api.support import PARITY_TOLERANCE, metric, metric_samples, serving, wait_ready, wait_until
from tests.support.processes import free_port

pytestmark = pytest.mark.slow


def served_version(client) -> str:
    return client.get("/model").json()["version"]


def test_without_a_model_it_starts_answers_503_and_becomes_ready_when_the_alias_appears(own_registry):
    own_registry.client().delete_registered_model_alias(own_registry.model_name, "production")
    with serving(own_registry.settings(), ready=False) as client:
        wait_until(
            lambda: metric(metric_samples(client), "model_reloads_total", result="failure") >= 2,
            what="two failed load attempts",
        )
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready" and "production" in ready.json()["reason"]
        row = own_registry.rows(1)[0]
        for response in (
            client.post("/predict", json=row),
            client.post("/predict/batch", json={"records": [row]}),
            client.get("/model"),
        ):
            assert response.status_code == 503
            assert "production" in response.json()["detail"]
        assert metric(metric_samples(client), "model_loaded") == 0

        own_registry.set_alias("production", own_registry.production)
        wait_ready(client)
        assert client.post("/predict", json=row).status_code == 200
        samples = metric_samples(client)
        assert metric(samples, "model_loaded") == 1
        assert metric(samples, "model_reloads_total", result="success") == 1


def test_an_unreachable_registry_is_retried_with_backoff_and_each_try_logged(
    own_registry, monkeypatch, caplog
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    caplog.set_level(logging.INFO, logger="api")
    settings = own_registry.settings(mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    with serving(settings, ready=False) as client:
        wait_until(
            lambda: metric(metric_samples(client), "model_reloads_total", result="failure") >= 3,
            what="three failed load attempts",
        )
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["reason"].startswith("loading models:/")
    attempts = [record.getMessage() for record in caplog.records if "attempt" in record.getMessage()]
    assert any("attempt 1" in message for message in attempts) and any(
        "attempt 3" in message for message in attempts
    )
    waits = [
        float(message.rsplit("next try in ", 1)[1].rstrip("s"))
        for message in attempts
        if "next try" in message
    ]
    assert waits[:3] == sorted(waits[:3]) and waits[1] > waits[0]


def test_the_new_version_serves_when_the_alias_moves(own_registry):
    rows = own_registry.rows(50)
    with serving(own_registry.settings()) as client:
        assert served_version(client) == own_registry.production
        own_registry.set_alias("production", own_registry.challenger)
        wait_until(lambda: served_version(client) == own_registry.challenger, what="the reload")
        answers = client.post("/predict/batch", json={"records": rows}).json()
        assert answers["model_version"] == own_registry.challenger
        served = [item["probability"] for item in answers["predictions"]]
        np.testing.assert_allclose(
            served, own_registry.expected(own_registry.challenger, 50), atol=PARITY_TOLERANCE
        )
        samples = metric_samples(client)
        assert metric(samples, "model_reloads_total", result="success") == 2
        assert metric(samples, "model_info", version=own_registry.challenger, alias="production") == 1
        assert metric(samples, "model_info", version=own_registry.production) == 0


def test_a_failed_reload_keeps_the_old_model_serving_and_is_counted(own_registry, caplog):
    caplog.set_level(logging.ERROR, logger="api")
    rows = own_registry.rows(50)
    with serving(own_registry.settings()) as client:
        own_registry.set_alias("production", own_registry.broken)
        wait_until(
            lambda: metric(metric_samples(client), "model_reloads_total", result="failure") >= 1,
            what="the failed reload",
        )
        assert served_version(client) == own_registry.production
        answers = client.post("/predict/batch", json={"records": rows})
        assert answers.status_code == 200 and answers.json()["model_version"] == own_registry.production
        served = [item["probability"] for item in answers.json()["predictions"]]
        np.testing.assert_allclose(
            served, own_registry.expected(own_registry.production, 50), atol=PARITY_TOLERANCE
        )
        samples = metric_samples(client)
        assert metric(samples, "model_loaded") == 1
        assert metric(samples, "model_info", version=own_registry.production) == 1
        assert client.get("/ready").status_code == 200
    assert any(f"v{own_registry.broken} failed" in record.getMessage() for record in caplog.records)


def test_the_schema_follows_the_model(own_registry, tmp_path):
    """A version whose contract narrows a range: after the reload, the docs and the validation say so."""
    narrowed = tmp_path / "narrowed-model"
    shutil.copytree(own_registry.model_dir(own_registry.production), narrowed)
    mlmodel = yaml.safe_load((narrowed / "MLmodel").read_text())
    numeric = mlmodel["metadata"]["feature_metadata"]["numeric"]
    feature = next(iter(numeric))
    numeric[feature]["max"] = numeric[feature]["min"] + 10
    (narrowed / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    # Its serving files are production's, and so are their digests.
    version = own_registry.add_version(narrowed.as_uri())
    row = own_registry.rows(1)[0] | {feature: numeric[feature]["min"] + 11}
    with serving(own_registry.settings()) as client:
        old = client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"]
        assert old["properties"][feature]["maximum"] > numeric[feature]["max"]
        assert client.post("/predict", json=row).status_code == 200
        own_registry.set_alias("production", str(version))
        wait_until(lambda: served_version(client) == str(version), what="the reload")
        new = client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"]
        assert new["properties"][feature]["maximum"] == numeric[feature]["max"]
        assert client.post("/predict", json=row).status_code == 422


def exported_model(registry, dest: Path) -> Path:
    """What CI bakes into the image (`python -m stages.ci.export_model`): the production version downloaded
    from `models:/<name>/<version>`, which leaves MLflow's `registered_model_meta` next to the model."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)  # `models:/` URIs resolve against the global store
    try:
        mlflow.artifacts.download_artifacts(
            f"models:/{registry.model_name}/{registry.production}", dst_path=dest
        )
    finally:
        mlflow.set_tracking_uri(previous)
    assert (dest / "registered_model_meta").is_file()
    return dest


def test_a_local_model_directory_serves_without_a_registry(api_registry, monkeypatch, tmp_path):
    model_dir = exported_model(api_registry, tmp_path / "image-model")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = api_registry.settings(model_uri=str(model_dir), mlflow_tracking_uri=None)
    with serving(settings) as client:
        card = client.get("/model").json()
        assert (card["name"], card["version"], card["git_sha"]) == (
            api_registry.model_name,
            api_registry.production,
            None,
        )
        rows = api_registry.rows(100)
        answers = client.post("/predict/batch", json={"records": rows}).json()["predictions"]
        expected = api_registry.expected(api_registry.production, 100)
        np.testing.assert_allclose([item["probability"] for item in answers], expected, atol=PARITY_TOLERANCE)
    # With a registry at hand, the baked model's card gets the version's lineage too.
    with serving(api_registry.settings(model_uri=str(model_dir))) as client:
        registered = api_registry.client().get_model_version(api_registry.model_name, api_registry.production)
        assert client.get("/model").json()["git_sha"] == registered.tags["git_sha"]


def unsupported_model(registry, dest: Path) -> Path:
    """The production pipeline with another numeric scaler: a shape the fast path does not compile."""
    source = registry.model_dir(registry.production)
    logged = mlflow.models.Model.load(str(source))
    pipeline = clone(registry.pipeline(registry.production))
    numeric = pipeline.named_steps["preprocess"].transformers[0][1]
    numeric.steps[-1] = ("scale", MinMaxScaler())
    # Fitted on the test split against the production model's labels: any fitted pipeline of this shape will do.
    frame = registry.test_frame
    labels = registry.pipeline(registry.production).predict(frame)
    pipeline.fit(frame, labels)
    mlflow.sklearn.save_model(
        pipeline,
        dest,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        signature=logged.signature,
        input_example=logged.load_input_example(str(source)),
        pyfunc_predict_fn="predict_proba",
        metadata=logged.metadata,
    )
    return dest


def test_an_unsupported_pipeline_falls_back_to_the_generic_path_with_a_log_and_a_metric(
    api_registry, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="api")
    model_dir = unsupported_model(api_registry, tmp_path / "minmax-model")
    pipeline = mlflow.sklearn.load_model(str(model_dir))
    with serving(api_registry.settings(model_uri=str(model_dir), allow_pickle_models=True)) as client:
        card = client.get("/model").json()
        assert card["predictor"] == "generic" and "MinMaxScaler" in card["fallback_reason"]
        assert metric(metric_samples(client), "model_fast_path") == 0
        rows = api_registry.rows()
        answers = client.post("/predict/batch", json={"records": rows[:1000]}).json()["predictions"]
        expected = pipeline.predict_proba(api_registry.test_frame.head(1000))[:, 1]
        np.testing.assert_allclose([item["probability"] for item in answers], expected, atol=PARITY_TOLERANCE)
        single = client.post("/predict", json=rows[0]).json()
        assert single["probability"] == pytest.approx(expected[0], abs=PARITY_TOLERANCE)
    assert any(
        "generic pandas path" in record.getMessage() and "MinMaxScaler" in record.getMessage()
        for record in caplog.records
    )
