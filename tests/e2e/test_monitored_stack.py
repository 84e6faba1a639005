"""The stack without Docker: every process of compose.yaml that holds this project's logic or config runs
for real on loopback, with the project's own files.

MLflow on a fresh PostgreSQL database <- the pipeline on a sample, promoted to production <- the api,
which loads it from the registry <- Prometheus with prometheus.yml (only its targets rewritten) and the
rules (only `for:` shortened) -> Alertmanager with alertmanager.yml through entrypoint.sh -> a webhook
inside this test. Prometheus and Alertmanager run behind basic auth with the web config files that
monitoring/auth/web_config.py writes, as in compose, and the api with API keys on: clients send one, and
Prometheus scrapes /metrics with the metrics key written beside them. The test checks that a request without credentials
is refused, drives traffic and feedback, evaluates every dashboard query, shifts the traffic's age until
FeatureDrift is delivered (to the webhook, and through the retrain receiver, api/retrain_dispatch.py, as
a `repository_dispatch` to a fake GitHub API), stops the api, and waits for ApiDown to be delivered.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from api.new_key import add_key
from tests.monitoring.native import (
    PanelQuery,
    loopback_prometheus_config,
    panel_queries,
    query,
    rules_with_short_for,
    running_alertmanager,
    running_prometheus,
    wait_until,
    wait_until_ready,
    web_auth,
    webhook_receiver,
)
from tests.retraining.fakes import fake_github
from tests.retraining.fakes import receiver as retrain_receiver
from tests.support.pipeline import trained_and_promoted
from tests.support.processes import REPO_ROOT, free_port, require_tool, running, stop, subprocess_env
from tests.support.services import mlflow_server

# Test-only: long enough to go through `pending`, short enough that the test does not wait minutes.
SHORT_FOR = "1s"
TRAFFIC_LIMIT = 5000  # requests of the background load, at most
DRIFT_WINDOW_ROWS = 2000  # each worker's own window; the alerts read the rules' 30 minutes
BATCH_ROWS = 1000
API_SERIES = [
    'up{job="api"} == 1',
    # Scrapes behind basic auth: Prometheus sends its password files.
    'up{job="prometheus"} == 1',
    'up{job="alertmanager"} == 1',
    'model_loaded{job="api"} == 1',
    'model_info{job="api"}',
    'http_requests_total{job="api", handler="/predict", status="2xx"}',
    'predictions_total{job="api"}',
    'unknown_category_total{job="api"}',
    'request_validation_errors_total{job="api", field="age"}',
]


def post(url: str, payload: Any, key: str | None) -> int:
    return post_for_answer(url, payload, key)[0]


def post_for_answer(url: str, payload: Any, key: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:  # an unclosed error response is a ResourceWarning, and warnings are errors here
            return error.code, None


def records(workdir: Path, count: int) -> list[dict[str, Any]]:
    """Rows of the test split, as the api takes them: features only, missing values as null."""
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    frame = pd.read_parquet(workdir / "data" / "prepared" / "test.parquet").head(count)
    frame = frame.drop(columns=[params["features"]["target"]]).astype(object)
    return frame.where(frame.notna(), None).to_dict(orient="records")


def true_labels(workdir: Path, count: int) -> list[Any]:
    """The labels of the same rows, in the target's own JSON type, as a client would report them."""
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    frame = pd.read_parquet(workdir / "data" / "prepared" / "test.parquet").head(count)
    return [
        label.item() if hasattr(label, "item") else label for label in frame[params["features"]["target"]]
    ]


def shifted(rows: list[dict[str, Any]], count: int, params: dict[str, Any]) -> list[dict[str, Any]]:
    """`count` rows whose age is 25 years later, clipped to the contract: a population the model never saw."""
    oldest = params["features"]["numeric"]["age"]["max"]
    return [{**row, "age": min(row["age"] + 25, oldest)} for row in (rows * (count // len(rows) + 1))[:count]]


def an_unseen_category(workdir: Path) -> tuple[str, str]:
    """An allowed category that the sample's training split never contained: the api accepts it and counts
    it in unknown_category_total."""
    metadata = json.loads((workdir / "data" / "model" / "feature_metadata.json").read_text())
    for feature, meta in metadata["categorical"].items():
        unseen = sorted(set(meta["allowed"]) - set(meta["categories"]))
        if unseen:
            return feature, unseen[0]
    raise AssertionError("the training sample saw every allowed category; pick another sample size")


def drive_traffic(
    api: str, rows: list[dict[str, Any]], labels: list[Any], unseen: tuple[str, str], key: str
) -> dict[int, int]:
    """One round of everything the Service dashboard shows: single and batch predictions, feedback on
    them (their true labels, by request id), an unseen category, invalid fields. Returns the count per
    status code."""
    statuses: dict[int, int] = {}

    def count(status: int) -> None:
        statuses[status] = statuses.get(status, 0) + 1

    feedback = []
    for row, label in zip(rows, labels, strict=True):
        status, answer = post_for_answer(f"{api}/predict", row, key)
        count(status)
        feedback.append({"request_id": answer["request_id"], "label": label})
    count(post(f"{api}/predict/batch", {"records": rows[:50]}, key))
    status, joined = post_for_answer(f"{api}/feedback", feedback, key)
    count(status)
    counts = {result: joined[result] for result in ("matched", "unknown", "duplicate")}
    assert counts == {"matched": len(rows), "unknown": 0, "duplicate": 0}, joined
    feature, category = unseen
    count(post(f"{api}/predict", {**rows[0], feature: category}, key))
    count(post(f"{api}/predict", {**rows[0], "age": -5}, key))  # out of range: 422 on `age`
    count(post(f"{api}/predict", {**rows[0], "hours_per_week": "forty"}, key))  # wrong type: 422
    return statuses


class BackgroundLoad:
    """A steady trickle of valid predictions and of feedback on them, so that every rate, quantile and
    counter increase has fresh samples while the dashboards are evaluated (the online figures are
    increases of counters: feedback sent before Prometheus' first scrape shows none). Bounded in count;
    stops on request."""

    FEEDBACK_EVERY = 20

    def __init__(self, api: str, rows: list[dict[str, Any]], labels: list[Any], key: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api, rows, labels, key), daemon=True)

    def _run(self, api: str, rows: list[dict[str, Any]], labels: list[Any], key: str) -> None:
        feedback = []
        for index in range(TRAFFIC_LIMIT):
            if self._stop.wait(0.05):
                return
            try:
                status, answer = post_for_answer(f"{api}/predict", rows[index % len(rows)], key)
                if status == 200:
                    feedback.append({"request_id": answer["request_id"], "label": labels[index % len(rows)]})
                if len(feedback) == self.FEEDBACK_EVERY:
                    post(f"{api}/feedback", feedback, key)
                    feedback = []
            except OSError:
                return

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def sample_values(answer: dict[str, Any]) -> list[float]:
    assert answer["status"] == "success", answer
    return [float(item["value"][1]) for item in answer["data"]["result"]]


def refused_without_credentials(
    method: str, url: str, body: bytes | None = None, authorization: str | None = None
) -> int:
    """The status of a request that carries no credentials, or the given (wrong) ones."""
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def panels_without_data(
    prometheus: str, panels: list[PanelQuery], authorization: str
) -> dict[str, list[float]]:
    """Each panel whose query returns no sample, or NaN (a quantile or ratio over no requests)."""
    missing = {}
    for panel in panels:
        values = sample_values(query(prometheus, panel.expr, authorization))
        if not values or any(math.isnan(value) for value in values):
            missing[f"{panel.dashboard} / {panel.panel}: {panel.expr}"] = values
    return missing


def dispatched_alerts(body: dict[str, Any]) -> set[str]:
    """The alert names a repository_dispatch body carries."""
    return {item["alertname"] for item in body["client_payload"]["alerts"]}


@pytest.mark.slow
def test_traffic_reaches_every_dashboard_and_a_stopped_api_reaches_the_webhook(tmp_path, monkeypatch):
    require_tool("prometheus")
    require_tool("prometheus-alertmanager")

    with mlflow_server(tmp_path / "mlflow") as mlflow:
        pipeline = trained_and_promoted(tmp_path / "repo", mlflow.url)
        params = yaml.safe_load((pipeline.workdir / "params.yaml").read_text())
        rows = records(pipeline.workdir, 200)
        labels = true_labels(pipeline.workdir, 200)
        unseen = an_unseen_category(pipeline.workdir)

        api_port, prometheus_port, cadvisor_port = free_port(), free_port(), free_port()
        api = f"http://127.0.0.1:{api_port}"
        rules = rules_with_short_for(tmp_path / "rules", SHORT_FOR)
        auth = web_auth(tmp_path / "auth")
        as_prometheus = auth.header("prometheus")
        # API keys on, as a production deployment runs: clients send theirs, Prometheus scrapes /metrics
        # with the key monitoring-auth wrote (METRICS_API_KEY), whose hash is all the api holds.
        key = add_key(tmp_path / "api-keys.txt")
        api_env = subprocess_env(
            MLFLOW_TRACKING_URI=mlflow.url,
            MODEL_NAME=pipeline.model_name,
            MODEL_ALIAS=params["mlflow"]["aliases"]["production"],
            RELOAD_INTERVAL_SECONDS="30",
            API_KEYS_FILE=str(tmp_path / "api-keys.txt"),
            METRICS_API_KEYS_FILE=str(auth.metrics_api_keys_file),
            # Drift and the online metrics recomputed every second, over a window the shift below fills.
            DRIFT_INTERVAL_SECONDS="1",
            DRIFT_WINDOW_ROWS=str(DRIFT_WINDOW_ROWS),
            INFERENCE_LOG_DIR=str(tmp_path / "inference"),
        )
        api_args = ["python", "-m", "api", "--host", "127.0.0.1", "--port", str(api_port)]
        # entrypoint.sh writes it over the retrain receiver's placeholder, as compose sets it.
        dispatch_port = free_port()
        monkeypatch.setenv("RETRAIN_DISPATCH_URL", f"http://127.0.0.1:{dispatch_port}/alerts")

        with (
            webhook_receiver() as webhook,
            fake_github() as github,
            # No rate limit here: an OnlineQualityDrop dispatched first must not hold back FeatureDrift's.
            retrain_receiver(tmp_path, github, port=dispatch_port, RETRAIN_MIN_INTERVAL_SECONDS="0"),
            running_alertmanager(webhook.url, tmp_path / "alertmanager", auth=auth) as alertmanager,
            running(api_args, tmp_path / "api.log", env=api_env, cwd=REPO_ROOT) as api_process,
        ):
            # /ready answers 503 until the model is loaded from the registry.
            wait_until_ready(f"{api}/ready", api_process, tmp_path / "api.log", timeout=180)
            targets = {
                "api:8000": f"127.0.0.1:{api_port}",
                "cadvisor:8080": f"127.0.0.1:{cadvisor_port}",  # not running natively: container panels only parse
                "localhost:9090": f"127.0.0.1:{prometheus_port}",
                "alertmanager:9093": alertmanager.removeprefix("http://"),
            }
            config = loopback_prometheus_config(targets, rules, auth)
            with running_prometheus(config, tmp_path / "prometheus", prometheus_port, auth) as prometheus:
                # 0. Without credentials, neither answers: not a query, not the lifecycle API, not the
                # cross-origin silence that once muted every alert.
                silence = json.dumps({"matchers": [{"name": "alertname", "value": ".+", "isRegex": True}],
                                      "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2030-01-01T00:00:00Z",
                                      "createdBy": "attacker", "comment": "mute"}).encode()  # fmt: skip
                assert refused_without_credentials("POST", f"{alertmanager}/api/v2/silences", silence) == 401
                assert refused_without_credentials("GET", f"{alertmanager}/api/v2/alerts") == 401
                assert refused_without_credentials("GET", f"{prometheus}/api/v1/query?query=up") == 401
                assert refused_without_credentials("POST", f"{prometheus}/-/quit") == 401
                wrong = "Basic " + base64.b64encode(b"prometheus:not-the-password").decode()
                assert (
                    refused_without_credentials("GET", f"{prometheus}/api/v1/query?query=up", None, wrong)
                    == 401
                )

                # The api refuses strangers: no key, no prediction and no metrics.
                assert post(f"{api}/predict", rows[0], None) == 401
                assert refused_without_credentials("GET", f"{api}/metrics") == 401
                assert refused_without_credentials("GET", f"{api}/metrics", None, f"Bearer {key}") == 401

                statuses = drive_traffic(api, rows, labels, unseen, key)
                assert statuses.get(200) == len(rows) + 3, statuses
                assert statuses.get(422) == 2, statuses

                with BackgroundLoad(api, rows, labels, key):
                    # 1. Prometheus holds the api's series.
                    for series in API_SERIES:
                        wait_until(lambda s=series: sample_values(query(prometheus, s, as_prometheus)), 60,
                                   what=series)  # fmt: skip

                    # 2. Every panel query evaluates; every api panel has data. Rates need two scrapes and
                    # a rule evaluation after the traffic, hence the polling.
                    api_panels = [panel for panel in panel_queries() if "containers" not in panel.tags]
                    container_panels = [panel for panel in panel_queries() if "containers" in panel.tags]
                    assert api_panels and container_panels
                    try:
                        wait_until(lambda: not panels_without_data(prometheus, api_panels, as_prometheus), 120,
                                   interval=2)  # fmt: skip
                    except TimeoutError:
                        missing = panels_without_data(prometheus, api_panels, as_prometheus)
                        pytest.fail(f"api panels without data: {missing}")
                    for panel in container_panels:  # no cAdvisor here: they only have to evaluate
                        sample_values(query(prometheus, panel.expr, as_prometheus))

                # 3. The population shifts: every client now sends people 25 years older, until FeatureDrift,
                # labelled with the feature, travels to the webhook. The rules' PSI is over the last 30
                # minutes of every worker's rows: the shifted ones must outweigh the traffic before them.
                def age_drift() -> list[tuple[str, dict[str, Any]]]:
                    status = post(f"{api}/predict/batch", {"records": shifted(rows, BATCH_ROWS, params)}, key)
                    assert status == 200
                    return [(receiver, alert) for receiver, alert in webhook.alerts("FeatureDrift")
                            if alert["labels"].get("feature") == "age" and alert["status"] == "firing"]  # fmt: skip

                wait_until(lambda: age_drift(), 120, what="FeatureDrift{feature=age} at the webhook")
                receiver, alert = age_drift()[0]
                assert receiver == "critical", alert
                assert alert["annotations"]["summary"] and alert["annotations"]["runbook"]

                # ... and through the retrain receiver to GitHub, as one repository_dispatch.
                def drift_dispatches() -> list[dict[str, Any]]:
                    bodies = [sent["body"] for sent in github.dispatches()]
                    return [body for body in bodies if dispatched_alerts(body) == {"FeatureDrift"}]

                wait_until(lambda: drift_dispatches(), 60, what="FeatureDrift's dispatch at the fake GitHub")
                (dispatch,) = drift_dispatches()
                assert dispatch["event_type"] == "retrain"
                dispatched = dispatch["client_payload"]["alerts"]
                assert "age" in {item["labels"].get("feature") for item in dispatched}, dispatched

                # 4. The fault: the api stops. ApiDown must travel Prometheus -> Alertmanager (with the
                # alertmanager password) -> webhook.
                assert webhook.alerts("ApiDown") == [], "ApiDown fired while the api was up"
                stop(api_process)
                receiver, alert = webhook.wait_for("ApiDown", timeout=150)
                assert receiver == "critical"
                assert alert["labels"]["job"] == "api"
                assert alert["labels"]["instance"] == targets["api:8000"]
                assert alert["annotations"]["summary"] and alert["annotations"]["runbook"]
