"""alertmanager.yml and its entrypoint: amtool's checks, the routing tree, and a real Alertmanager that
delivers to a webhook and inhibits what ApiDown explains."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from tests.monitoring.native import (
    ALERTMANAGER_CONFIG,
    ALERTMANAGER_ENTRYPOINT,
    alerting_rules,
    get_json,
    load_yaml,
    running_alertmanager,
    wait_until,
    webhook_receiver,
)
from tests.support.processes import REPO_ROOT, require_tool


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("amtool"), *args], capture_output=True, text=True)


def render(tmp_path, webhook_url: str | None) -> subprocess.CompletedProcess:
    """Run entrypoint.sh with `true` in place of Alertmanager: it renders the config and stops."""
    env = {"PATH": "/usr/bin:/bin"}
    if webhook_url is not None:
        env["ALERTMANAGER_WEBHOOK_URL"] = webhook_url
    return subprocess.run(["sh", str(ALERTMANAGER_ENTRYPOINT), str(ALERTMANAGER_CONFIG),
                           str(tmp_path / "rendered.yml"), "true"], capture_output=True, text=True, env=env)  # fmt: skip


def test_amtool_accepts_the_config():
    result = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_entrypoint_passes_shellcheck_as_posix_sh():
    # The alertmanager image has busybox sh, not bash.
    result = subprocess.run([require_tool("shellcheck"), "--shell=sh", str(ALERTMANAGER_ENTRYPOINT)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_the_entrypoint_writes_the_webhook_url_from_the_environment(tmp_path):
    url = "https://hooks.example.invalid/alerts?token=a&b=/c"
    result = render(tmp_path, url)
    assert result.returncode == 0, result.stderr
    rendered = load_yaml(tmp_path / "rendered.yml")
    # The paging receivers post to it; `retrain` to the compose service (tests/retraining/test_dispatch.py).
    urls = {
        hook["url"]
        for receiver in rendered["receivers"]
        if receiver["name"] != "retrain"
        for hook in receiver["webhook_configs"]
    }
    assert urls == {url}
    checked = amtool("check-config", str(tmp_path / "rendered.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Apart from the URL, the running config is the committed one.
    original = load_yaml(ALERTMANAGER_CONFIG)
    for receiver in rendered["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = "url"
    for receiver in original["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = "url"
    assert rendered == original


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "ALERTMANAGER_WEBHOOK_URL"),
        ("", "ALERTMANAGER_WEBHOOK_URL"),
        ("hooks.example.invalid/alerts", "http:// or https://"),
        ('http://example.invalid/"x', "quotes"),
    ],
)
def test_the_entrypoint_refuses_a_missing_or_unusable_url(tmp_path, url, message):
    result = render(tmp_path, url)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "rendered.yml").exists()


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "ApiDown", "severity": "critical", "job": "api"}, "critical"),
        ({"alertname": "ApiHighLatencyP95", "severity": "warning", "job": "api"}, "warning"),
        ({"alertname": "Unknown"}, "warning"),
    ],
)
def test_routes_by_severity(labels, receiver):
    result = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
                    *(f"{key}={value}" for key, value in labels.items()))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def test_every_severity_of_the_rules_has_its_own_route():
    routes = load_yaml(ALERTMANAGER_CONFIG)["route"]["routes"]
    # The retrain route matches by alertname and continues: the severity routes still page for them.
    routed = {
        found.group(1)
        for route in routes
        for matcher in route["matchers"]
        if (found := re.fullmatch(r'severity="(\w+)"', matcher))
    }
    assert {rule["labels"]["severity"] for rule in alerting_rules()} <= routed


def test_inhibition_names_only_alerts_that_exist_and_api_down_covers_latency_and_errors():
    alerts = {rule["alert"] for rule in alerting_rules()}
    inhibited_by: dict[str, set[str]] = {}
    for rule in load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        (source,) = [re.fullmatch(r'alertname="(\w+)"', m).group(1) for m in rule["source_matchers"]]
        (pattern,) = [re.fullmatch(r'alertname=~"(.+)"', m).group(1) for m in rule["target_matchers"]]
        targets = set(pattern.split("|"))
        assert {source} | targets <= alerts, "an inhibit rule names an alert that no rule defines"
        inhibited_by[source] = targets
    assert {"ApiHighLatencyP95", "ApiHighErrorRatio"} <= inhibited_by["ApiDown"]


def test_the_webhook_url_placeholder_is_not_a_real_address():
    # `.invalid` never resolves (RFC 2606): an unrendered config fails loudly instead of posting somewhere.
    text = ALERTMANAGER_CONFIG.read_text()
    assert re.search(r'url: "http://[a-z-]+\.invalid/"', text)
    assert "alertmanager.yml" in (REPO_ROOT / "compose.yaml").read_text()


def post_alerts(alertmanager: str, alerts: list[dict]) -> None:
    starts = datetime.now(UTC)
    body = [{"labels": labels, "annotations": {"summary": labels["alertname"]},
             "startsAt": starts.isoformat(), "endsAt": (starts + timedelta(minutes=10)).isoformat()}
            for labels in alerts]  # fmt: skip
    request = urllib.request.Request(f"{alertmanager}/api/v2/alerts", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.slow
def test_a_real_alertmanager_delivers_api_down_to_the_webhook_and_inhibits_latency(tmp_path):
    down = {"alertname": "ApiDown", "severity": "critical", "job": "api", "instance": "api:8000"}
    slow = {"alertname": "ApiHighLatencyP95", "severity": "warning", "job": "api"}
    slow_elsewhere = {"alertname": "ApiHighLatencyP95", "severity": "warning", "job": "other"}
    with webhook_receiver() as webhook, running_alertmanager(webhook.url, tmp_path) as alertmanager:
        post_alerts(alertmanager, [down, slow, slow_elsewhere])

        receiver, alert = webhook.wait_for("ApiDown", timeout=60)
        assert receiver == "critical"
        assert alert["labels"] == down

        def state(labels: dict) -> dict | None:
            matchers = "&".join(
                "filter=" + urllib.parse.quote(f'{key}="{value}"') for key, value in labels.items()
            )
            found = get_json(f"{alertmanager}/api/v2/alerts?{matchers}")
            return found[0]["status"] if found else None

        inhibited = wait_until(lambda: (s := state(slow)) and s["inhibitedBy"] and s, 10, what="inhibition")
        assert inhibited["state"] == "suppressed"
        # The inhibition requires the same job: another job's latency is not explained by this api.
        assert state(slow_elsewhere)["inhibitedBy"] == []
