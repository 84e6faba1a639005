"""Faults of the registry show in metrics, a broken version is not downloaded on every poll, and a URI's
credentials are never told: not in /ready, not in a 503, not in /model, not in the logs."""

from __future__ import annotations

import logging
import time

import pytest

from api import registry
from api.redaction import RedactingFilter, redact
from tests.api.support import metric, metric_samples, serving, wait_until
from tests.support.processes import free_port

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-password"


def test_the_registry_gauges_follow_the_registry(own_registry):
    with serving(own_registry.settings()) as client:
        samples = metric_samples(client)
        assert metric(samples, "model_registry_up") == 1
        checked = metric(samples, "model_last_successful_check_timestamp_seconds")
        assert checked > 0
        # The alias goes away: every look-up of it now fails.
        own_registry.client().delete_registered_model_alias(own_registry.model_name, "production")
        wait_until(lambda: metric(metric_samples(client), "model_registry_up") == 0, what="registry_up 0")
        samples = metric_samples(client)
        assert metric(samples, "model_loaded") == 1  # the version it has keeps serving
        stale = metric(samples, "model_last_successful_check_timestamp_seconds")
        own_registry.set_alias("production", own_registry.production)
        wait_until(lambda: metric(metric_samples(client), "model_registry_up") == 1, what="registry_up 1")
        assert (
            metric(metric_samples(client), "model_last_successful_check_timestamp_seconds") > stale >= checked
        )


def test_a_version_that_failed_to_load_is_not_downloaded_again_until_the_alias_moves(
    own_registry, monkeypatch
):
    downloads: list[str | None] = []
    real_download = registry.downloaded

    def counted(settings, registered):
        downloads.append(registered.version)
        return real_download(settings, registered)

    monkeypatch.setattr("api.loading.downloaded", counted)
    with serving(own_registry.settings(reload_interval_seconds=0.05)) as client:
        own_registry.set_alias("production", own_registry.broken)
        wait_until(
            lambda: metric(metric_samples(client), "model_reloads_total", result="failure") >= 1,
            what="the failed reload",
        )
        checked = metric(metric_samples(client), "model_last_successful_check_timestamp_seconds")
        time.sleep(1.0)  # some twenty polls
        assert metric(metric_samples(client), "model_last_successful_check_timestamp_seconds") > checked
        assert downloads.count(own_registry.broken) == 1
        own_registry.set_alias("production", own_registry.challenger)
        wait_until(lambda: client.get("/model").json()["version"] == own_registry.challenger, what="the move")
        own_registry.set_alias("production", own_registry.broken)  # moved back: worth one more try
        wait_until(
            lambda: downloads.count(own_registry.broken) == 2, what="a second try of the broken version"
        )


def test_credentials_in_the_tracking_uri_are_never_told(own_registry, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RedactingFilter())
    uri = f"http://admin:{SECRET}@127.0.0.1:{free_port()}"
    with serving(own_registry.settings(mlflow_tracking_uri=uri), ready=False) as client:
        wait_until(
            lambda: metric(metric_samples(client), "model_reloads_total", result="failure") >= 1,
            what="a failed load",
        )
        ready = client.get("/ready")
        row = own_registry.rows(1)[0]
        not_ready = client.post("/predict", json=row)
        assert ready.status_code == not_ready.status_code == 503
        for answer in (ready, not_ready):
            assert SECRET not in answer.text
    assert caplog.records and SECRET not in caplog.text


def test_redact_hides_userinfo_and_keeps_the_rest():
    assert redact(f"http://user:{SECRET}@mlflow:5000/api x") == "http://***@mlflow:5000/api x"
    assert redact("s3://key@bucket/path and postgresql+psycopg2://u:p@db/x") == (
        "s3://***@bucket/path and postgresql+psycopg2://***@db/x"
    )
    assert redact("models:/adult-income@production") == "models:/adult-income@production"
    assert redact("mailto-free text with an @ sign") == "mailto-free text with an @ sign"
