"""prometheus.yml and the rules: promtool's checks and unit tests, and what promtool cannot know."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring.native import (
    COMPOSE_FILE,
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    RULES_DIR,
    WebAuth,
    alerting_rules,
    load_yaml,
    loopback_prometheus_config,
    rule_files,
    web_auth,
)
from tests.support.processes import require_tool

SEVERITIES = {"critical", "warning"}


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, cwd=cwd)


def test_promtool_accepts_the_config_and_finds_every_rule_file(tmp_path):
    # The file as it is, and as compose mounts it: with the credential files it names in place (promtool
    # checks that the api's bearer key file exists), the rules where prometheus.yml looks for them.
    result = promtool("check", "config", "--syntax-only", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    auth = web_auth(tmp_path / "auth")
    targets = {name: name for name in ("api:8000", "cadvisor:8080", "localhost:9090", "alertmanager:9093")}
    mounted = tmp_path / "prometheus.yml"
    mounted.write_text(yaml.safe_dump(loopback_prometheus_config(targets, RULES_DIR, auth), sort_keys=False))
    result = promtool("check", "config", str(mounted))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rule_files())} rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", *map(str, rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    tests = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert tests, "no promtool unit tests"
    result = promtool("test", "rules", *(path.name for path in tests), cwd=RULE_TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_both_firing_and_quiet():
    firing, quiet = set(), set()
    for path in RULE_TESTS_DIR.glob("*.yml"):
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alerting_rules()}
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_documented_alert_exists():
    alerts = {rule["alert"] for rule in alerting_rules()}
    assert alerts >= {
        "ApiDown",
        "ApiHighLatencyP95",
        "ApiHighErrorRatio",
        "ModelInferenceSlow",
        "ModelNotLoaded",
        "ModelReloadFailing",
        "NoPredictionsWhileTraffic",
        "ContainerCpuHigh",
        "ContainerMemoryNearLimit",
        "TargetMissing",
        "FeatureDrift",
        "FeatureDriftWarning",
        "PredictionDrift",
        "PredictionDriftWarning",
    }


def test_drift_alerts_compare_against_the_thresholds_the_model_exports():
    """No threshold is written in the rules: each comes with the served model (params.yaml `drift`)."""
    drift = [rule for rule in alerting_rules() if "Drift" in rule["alert"]]
    assert len(drift) == 4
    for rule in drift:
        level = "warning" if rule["alert"].endswith("Warning") else "alert"
        assert f'feature_drift_psi_threshold{{level="{level}"}}' in rule["expr"], rule["alert"]
        assert "job_model_version:drift_window:enough_rows" in rule["expr"], rule["alert"]
        assert not re.search(r"\b0\.\d+\b|\b1000\b", rule["expr"]), rule["alert"]
    (feature,) = [rule for rule in drift if rule["alert"] == "FeatureDrift"]
    assert feature["for"] == "15m"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_says_what_why_and_what_to_do(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    for annotation in ("summary", "description", "runbook"):
        assert rule["annotations"].get(annotation, "").strip(), f"{rule['alert']} has no {annotation}"


def test_error_ratio_alert_is_guarded_against_zero_traffic():
    (rule,) = [rule for rule in alerting_rules() if rule["alert"] == "ApiHighErrorRatio"]
    assert "job:http_requests:rate1m >" in rule["expr"]


def test_scrapes_the_api_cadvisor_itself_and_alertmanager():
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {scrape["job_name"]: scrape for scrape in config["scrape_configs"]}
    assert set(jobs) >= {"api", "cadvisor", "prometheus", "alertmanager"}
    assert jobs["api"].get("metrics_path", "/metrics") == "/metrics"
    assert config["alerting"]["alertmanagers"], "alerts go nowhere"


def test_every_target_is_a_compose_service_on_a_port_it_serves():
    """A renamed service or a moved port would silently leave a target down."""
    services = load_yaml(COMPOSE_FILE)["services"]
    config = load_yaml(PROMETHEUS_CONFIG)
    targets = [target for scrape in config["scrape_configs"] for static in scrape["static_configs"]
               for target in static["targets"]]  # fmt: skip
    targets += [target for manager in config["alerting"]["alertmanagers"]
                for static in manager["static_configs"] for target in static["targets"]]  # fmt: skip
    known_ports = {"api": 8000, "cadvisor": 8080, "alertmanager": 9093, "prometheus": 9090}
    for target in targets:
        host, port = target.rsplit(":", 1)
        service = "prometheus" if host == "localhost" else host
        assert service in services, f"{target}: no compose service {service}"
        assert int(port) == known_ports[service], target
        published = [str(mapping) for mapping in services[service].get("ports", [])]
        if published:
            assert any(mapping.endswith(f":{port}") for mapping in published), (target, published)


def test_the_loopback_rewrite_changes_only_addresses_rule_paths_and_password_files(tmp_path):
    original = load_yaml(PROMETHEUS_CONFIG)
    names = ["api:8000", "cadvisor:8080", "localhost:9090", "alertmanager:9093"]
    mapping = {name: f"127.0.0.1:{10000 + index}" for index, name in enumerate(names)}
    auth = WebAuth(tmp_path / "auth")
    rewritten = loopback_prometheus_config(mapping, tmp_path, auth)

    assert rewritten["scrape_configs"][0]["static_configs"][0]["targets"][0].startswith("127.0.0.1:")
    assert rewritten["rule_files"] == [str(tmp_path / "*.yml")]
    assert rewritten["alerting"]["alertmanagers"][0]["basic_auth"] == {
        "username": "alertmanager", "password_file": str(auth.password_file("alertmanager")),
    }  # fmt: skip
    for config in (original, rewritten):
        for section in [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]:
            for static in section["static_configs"]:
                static["targets"] = []
            if "basic_auth" in section:
                section["basic_auth"]["password_file"] = Path(section["basic_auth"]["password_file"]).name
            if "authorization" in section:
                key_file = section["authorization"]["credentials_file"]
                section["authorization"]["credentials_file"] = Path(key_file).name
        config["rule_files"] = []
    assert rewritten == original


def test_prometheus_sends_credentials_to_itself_and_alertmanager_each_under_its_own_name():
    config = load_yaml(PROMETHEUS_CONFIG)
    sections = {scrape["job_name"]: scrape for scrape in config["scrape_configs"]}
    sections["alerting"] = config["alerting"]["alertmanagers"][0]
    for name, service in (
        ("prometheus", "prometheus"),
        ("alertmanager", "alertmanager"),
        ("alerting", "alertmanager"),
    ):
        assert sections[name]["basic_auth"] == {
            "username": service, "password_file": f"/etc/prometheus/auth/{service}.password",
        }, name  # fmt: skip
