"""The alert-driven trigger (api/retrain_dispatch.py), as a real process on loopback, against a fake
GitHub API started in the test: Alertmanager's webhook in, one `repository_dispatch` out per firing
group and interval; bad bodies are 4xx; GitHub's failure is a 502; the token goes to GitHub only.
And Alertmanager routes FeatureDrift and OnlineQualityDrop to it, besides the people who are paged."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.monitoring.native import ALERTMANAGER_CONFIG, ALERTMANAGER_ENTRYPOINT, load_yaml
from tests.retraining.fakes import REPOSITORY, TOKEN, fake_github, receiver
from tests.support.processes import REPO_ROOT, require_tool, subprocess_env, tail


def notification(group: str, *alerts: tuple[str, str], status: str = "firing") -> dict[str, Any]:
    """Alertmanager's webhook body (version 4), with (alertname, status) alerts."""
    return {
        "version": "4",
        "groupKey": group,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "retrain",
        "groupLabels": {"alertname": alerts[0][0]},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "alerts": [
            {
                "status": state,
                "labels": {"alertname": name, "feature": "age", "job": "api", "severity": "critical"},
                "annotations": {"summary": f"{name} summary"},
                "startsAt": "2026-12-03T08:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.invalid/graph",
                "fingerprint": "0123456789abcdef",
            }
            for name, state in alerts
        ],
    }


# ---------------------------------------------------------------------------------------------- dispatch
def test_a_firing_drift_alert_dispatches_a_retrain_to_github(tmp_path):
    with fake_github() as github, receiver(tmp_path, github) as app:
        status, answer = app.post(notification('{}:{alertname="FeatureDrift"}', ("FeatureDrift", "firing")))
        assert (status, answer["dispatched"]) == (200, True), answer
        (sent,) = github.dispatches()
    assert sent["path"] == f"/repos/{REPOSITORY}/dispatches"
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert sent["headers"]["Accept"] == "application/vnd.github+json"
    assert sent["body"]["event_type"] == "retrain"
    payload = sent["body"]["client_payload"]
    assert [alert["alertname"] for alert in payload["alerts"]] == ["FeatureDrift"]
    assert payload["alerts"][0]["labels"]["feature"] == "age"
    assert len(payload) <= 10, "GitHub takes at most 10 top-level client_payload keys"
    assert TOKEN not in app.log.read_text()


def test_other_alerts_and_resolved_ones_dispatch_nothing(tmp_path):
    with fake_github() as github, receiver(tmp_path, github) as app:
        for body in (
            notification("g1", ("ApiDown", "firing")),
            notification("g2", ("FeatureDriftWarning", "firing"), ("PredictionDrift", "firing")),
            notification("g3", ("OnlineQualityDrop", "resolved"), status="resolved"),
        ):
            status, answer = app.post(body)
            assert (status, answer["dispatched"]) == (200, False), answer
        assert github.dispatches() == []


def test_one_dispatch_per_group_while_it_fires_and_per_interval(tmp_path):
    with fake_github() as github, receiver(tmp_path, github, RETRAIN_MIN_INTERVAL_SECONDS="2") as app:
        drift = notification("drift", ("FeatureDrift", "firing"))
        assert app.post(drift)[1]["dispatched"] is True
        # Alertmanager repeats a firing group: the same group key is not dispatched again.
        repeated = app.post(drift)[1]
        assert repeated["dispatched"] is False and "already" in repeated["reason"]
        # Another group within the interval is rate-limited.
        quality = notification("quality", ("OnlineQualityDrop", "firing"))
        limited = app.post(quality)[1]
        assert limited["dispatched"] is False and "rate-limited" in limited["reason"]
        time.sleep(2.2)
        assert app.post(quality)[1]["dispatched"] is True
        # Resolved, the drift group may dispatch again when it fires anew (after the interval).
        assert (
            app.post(notification("drift", ("FeatureDrift", "resolved"), status="resolved"))[1]["dispatched"]
            is False
        )
        time.sleep(2.2)
        assert app.post(drift)[1]["dispatched"] is True
        assert len(github.dispatches()) == 3


def test_the_rate_limit_and_the_groups_survive_a_restart_through_the_state_file(tmp_path):
    state = tmp_path / "state" / "retrain-dispatch.json"
    with fake_github() as github:
        with receiver(tmp_path, github, RETRAIN_DISPATCH_STATE_FILE=str(state)) as app:
            assert app.post(notification("drift", ("FeatureDrift", "firing")))[1]["dispatched"] is True
        assert TOKEN not in state.read_text()
        with receiver(tmp_path, github, RETRAIN_DISPATCH_STATE_FILE=str(state)) as app:
            assert "already" in app.post(notification("drift", ("FeatureDrift", "firing")))[1]["reason"]
            assert "rate-limited" in app.post(notification("q", ("OnlineQualityDrop", "firing")))[1]["reason"]
        assert len(github.dispatches()) == 1


def test_githubs_refusal_is_a_502_that_alertmanager_retries_and_nothing_is_recorded(tmp_path):
    with fake_github() as github, receiver(tmp_path, github) as app:
        github.status = 401
        status, answer = app.post(notification("drift", ("FeatureDrift", "firing")))
        assert status == 502
        assert "401" in answer["detail"] and "Bad credentials" in answer["detail"]
        assert TOKEN not in json.dumps(answer)
        github.status = 204
        assert app.post(notification("drift", ("FeatureDrift", "firing")))[1]["dispatched"] is True
        log = app.log.read_text()
    assert "401" in log
    assert TOKEN not in log


@pytest.mark.parametrize("redirect", [302, 307])
def test_a_redirect_is_a_failed_dispatch_and_the_token_goes_nowhere_else(tmp_path, redirect):
    with fake_github() as github, receiver(tmp_path, github) as app:
        github.status = redirect
        status, answer = app.post(notification("drift", ("FeatureDrift", "firing")))
    assert status == 502 and str(redirect) in answer["detail"]
    assert [request["path"] for request in github.requests] == [f"/repos/{REPOSITORY}/dispatches"]


def test_plain_http_to_github_is_refused_off_loopback():
    from api.retrain_dispatch import Settings

    with pytest.raises(SystemExit, match="https:// unless on loopback"):
        Settings.from_environment({"GITHUB_API_URL": "http://api.github.com"})
    assert Settings.from_environment({"GITHUB_API_URL": "http://127.0.0.1:9"}).api_url == "http://127.0.0.1:9"


def test_without_a_token_alerts_are_taken_and_nothing_is_dispatched(tmp_path):
    with fake_github() as github, receiver(tmp_path, None, GITHUB_API_URL=github.url) as app:
        status, answer = app.post(notification("drift", ("FeatureDrift", "firing")))
        assert (status, answer["dispatched"]) == (200, False)
        assert "off" in answer["reason"]
        assert github.dispatches() == []


def test_an_over_long_label_is_cut_not_refused_so_the_trigger_is_not_lost(tmp_path):
    """Alertmanager does not retry a 4xx: a refused notification would be a lost retrain."""
    with fake_github() as github, receiver(tmp_path, github) as app:
        long_label = notification("g", ("FeatureDrift", "firing"))
        long_label["alerts"][0]["labels"]["feature"] = "x" * 5000
        status, answer = app.post(long_label)
        assert status == 200 and answer["dispatched"] is True, answer
        assert "x" * 4096 in json.dumps(github.dispatches()[0]["body"])
        assert "x" * 4097 not in json.dumps(github.dispatches()[0]["body"])


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_bodies_are_4xx_with_the_reason(tmp_path):
    with fake_github() as github, receiver(tmp_path, github) as app:
        status, answer = app.post(b"{not json")
        assert status == 422 and answer["detail"], answer
        status, answer = app.post({"version": "4", "status": "firing", "alerts": []})
        assert status == 422 and any(item["loc"] == ["groupKey"] for item in answer["detail"]), answer
        many = notification("g", *[("FeatureDrift", "firing")] * 1001)
        assert app.post(many)[0] == 422
        # A declared length over the bound is refused before a byte of the body is read.
        connection = http.client.HTTPConnection(urlsplit(app.url).netloc, timeout=30)
        connection.putrequest("POST", "/alerts")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(1024 * 1024 + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and b"bytes" in response.read()
        connection.close()
        assert github.dispatches() == []


# ---------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"alertname": "FeatureDrift", "severity": "critical", "job": "api"}, "retrain,critical"),
        ({"alertname": "OnlineQualityDrop", "severity": "warning", "job": "api"}, "retrain,warning"),
        ({"alertname": "PredictionDrift", "severity": "critical", "job": "api"}, "critical"),
    ],
)
def test_alertmanager_routes_the_two_alerts_to_the_receiver_and_still_pages(labels, receivers):
    result = subprocess.run(
        [require_tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
         *(f"{key}={value}" for key, value in labels.items())],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receivers


def test_the_route_posts_to_the_compose_service_with_resolved_notifications():
    config = load_yaml(ALERTMANAGER_CONFIG)
    (retrain,) = [item for item in config["receivers"] if item["name"] == "retrain"]
    (hook,) = retrain["webhook_configs"]
    assert hook["send_resolved"] is True  # a resolved group may dispatch again
    services = load_yaml(REPO_ROOT / "compose.yaml")["services"]
    dispatch, alertmanager = services["retrain-dispatch"], services["alertmanager"]
    port = dispatch["command"][dispatch["command"].index("--port") + 1]
    assert alertmanager["environment"]["RETRAIN_DISPATCH_URL"] == f"http://retrain-dispatch:{port}/alerts"
    assert set(dispatch["networks"]) == set(alertmanager["networks"])  # reachable from Alertmanager
    assert "ports" not in dispatch  # and from nothing outside the stack


def render(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(ALERTMANAGER_ENTRYPOINT), str(ALERTMANAGER_CONFIG), str(tmp_path / "rendered.yml"), "true"],
        capture_output=True, text=True,
        env=subprocess_env(ALERTMANAGER_WEBHOOK_URL="https://hooks.example.invalid/alerts", **env),
    )  # fmt: skip


def test_the_entrypoint_writes_the_retrain_url_into_the_retrain_receiver_alone(tmp_path):
    url = "http://127.0.0.1:9/alerts?a=1&b=/c"
    result = render(tmp_path, RETRAIN_DISPATCH_URL=url)
    assert result.returncode == 0, result.stderr
    rendered = {item["name"]: item for item in load_yaml(tmp_path / "rendered.yml")["receivers"]}
    assert [hook["url"] for hook in rendered["retrain"]["webhook_configs"]] == [url]
    assert {
        hook["url"] for name in ("critical", "warning") for hook in rendered[name]["webhook_configs"]
    } == {"https://hooks.example.invalid/alerts"}
    refused = render(tmp_path, RETRAIN_DISPATCH_URL="retrain-dispatch:9095/alerts")
    assert refused.returncode != 0 and "RETRAIN_DISPATCH_URL must start with http://" in refused.stderr


def test_the_receiver_log_never_shows_the_token_even_at_debug(tmp_path):
    with fake_github() as github, receiver(tmp_path, github, LOG_LEVEL="debug") as app:
        app.post(notification("drift", ("FeatureDrift", "firing")))
    assert TOKEN not in tail(app.log, 10_000)
