"""Grafana's provisioning and dashboards. Grafana itself does not run here; a real Prometheus with the
project's rules evaluates every panel query, and the e2e test does it again with live data."""

from __future__ import annotations

import re

import pytest

from tests.monitoring.native import (
    COMPOSE_FILE,
    DASHBOARDS_DIR,
    GRAFANA_DATASOURCES,
    GRAFANA_PROVIDERS,
    PROMETHEUS_CONFIG,
    dashboards,
    load_yaml,
    loopback_prometheus_config,
    panel_queries,
    panels,
    query,
    recorded_names,
    running_prometheus,
)
from tests.support.processes import free_port

# A name with colons is a recording rule by Prometheus' naming convention.
RECORDED_NAME = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]*[a-zA-Z0-9_]\b")


def the_datasource() -> dict:
    (path,) = GRAFANA_DATASOURCES.glob("*.yml")
    (source,) = load_yaml(path)["datasources"]
    return source


def compose_mounts(service: str) -> dict[str, str]:
    """compose bind mounts of a service: container path -> repository path."""
    mounts = {}
    for volume in load_yaml(COMPOSE_FILE)["services"][service]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = source.removeprefix("./")
    return mounts


def test_the_datasource_has_a_fixed_uid_and_points_at_compose_s_prometheus():
    source = the_datasource()
    assert source["type"] == "prometheus"
    assert source["uid"], "without a fixed uid Grafana invents one and the dashboards break"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in load_yaml(COMPOSE_FILE)["services"]


def test_the_datasource_interval_is_the_scrape_interval():
    assert (
        the_datasource()["jsonData"]["timeInterval"]
        == load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    )


def test_the_provider_loads_the_mounted_dashboards_directory():
    (path,) = GRAFANA_PROVIDERS.glob("*.yml")
    (provider,) = load_yaml(path)["providers"]
    assert provider["type"] == "file"
    mounts = compose_mounts("grafana")
    assert mounts[provider["options"]["path"]] == str(DASHBOARDS_DIR.relative_to(COMPOSE_FILE.parent))
    assert mounts["/etc/grafana/provisioning"] == "monitoring/grafana/provisioning"


def test_there_are_the_service_and_containers_dashboards_with_unique_uids():
    boards = list(dashboards().values())
    titles = [board["title"] for board in boards]
    assert any("Service" in title for title in titles) and any("Containers" in title for title in titles)
    uids = [board["uid"] for board in boards]
    assert len(set(uids)) == len(uids) and all(uids)


@pytest.mark.parametrize("path", sorted(DASHBOARDS_DIR.glob("*.json")), ids=lambda path: path.name)
def test_every_panel_uses_the_provisioned_datasource_uid(path):
    uid = the_datasource()["uid"]
    board = dashboards()[path]
    ids = [panel["id"] for panel in panels(board)]
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboards_use_only_recording_rules_that_exist():
    recorded = recorded_names()
    used = {name for panel in panel_queries() for name in RECORDED_NAME.findall(panel.expr)}
    assert used, "dashboards use no recording rule: the rules exist for them"
    assert used - recorded == set()


def test_the_service_dashboard_shows_traffic_latency_errors_and_the_model():
    (service,) = [board for board in dashboards().values() if "Service" in board["title"]]
    exprs = " ".join(target["expr"] for panel in panels(service) for target in panel.get("targets", []))
    for needle in [
        "job_handler_status:http_requests:rate1m",  # rate by route and status
        "http_request_duration_seconds:p50",
        "http_request_duration_seconds:p95",
        "http_request_duration_seconds:p99",
        "http_requests_5xx:ratio",
        "model_inference_seconds:p50",
        "model_inference_seconds:p99",
        "http_requests_inprogress",
        "model_info",
        "model_reloads_total",
        "predictions:rate1m",
        "prediction_probability_bucket",
        "unknown_category_total",
        "request_validation_errors_total",
    ]:
        assert needle in exprs, needle


def test_the_service_dashboard_shows_drift_and_online_quality_against_the_model_s_own_figures():
    (service,) = [board for board in dashboards().values() if "Service" in board["title"]]
    rows = {panel["title"] for panel in panels(service) if panel["type"] == "row"}
    assert {"Drift", "Online quality"} <= rows
    exprs = " ".join(target["expr"] for panel in panels(service) for target in panel.get("targets", []))
    for needle in [
        # The service's figures, from every worker's and pod's counts (rules/drift.yml, feedback.yml):
        # no worker's own window, which could not be combined.
        "job_model_version_feature:feature_drift_psi:30m{",
        "feature_drift_psi_threshold",  # the thresholds come from the model, not from the dashboard
        "job_model_version:prediction_drift_psi:30m",
        "job_model_version:drift_rows:increase30m",
        "drift_min_window_rows",
        "job:model_online_accuracy:1h",
        "job:model_online_roc_auc:1h",
        "job:model_online_log_loss:1h",
        "job:model_online_samples:increase1h",
        "feedback_total",
        "model_test_metric",
        "model_quality_floor",
    ]:
        assert needle in exprs, needle
    for per_worker in (
        "feature_drift_psi{",
        "prediction_drift_psi{",
        "drift_window_rows",
        "model_online_roc_auc{",
    ):
        assert per_worker not in exprs, per_worker


def test_the_containers_dashboard_shows_cpu_memory_against_limit_and_network_per_service():
    (containers,) = [board for board in dashboards().values() if "Containers" in board["title"]]
    exprs = " ".join(target["expr"] for panel in panels(containers) for target in panel.get("targets", []))
    for needle in [
        "cpu_usage",
        "memory_working_set",
        "spec_memory_limit",
        "network_receive",
        "network_transmit",
    ]:
        assert f"service:container_{needle}" in exprs, needle


@pytest.mark.slow
def test_every_panel_query_parses_and_evaluates_in_prometheus(tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the queries only need to evaluate
    targets = {name: dead for name in ["api:8000", "cadvisor:8080", "localhost:9090", "alertmanager:9093"]}
    with running_prometheus(loopback_prometheus_config(targets), tmp_path / "prometheus") as prometheus:
        failures = {}
        for panel in panel_queries():
            answer = query(prometheus, panel.expr)
            if answer.get("status") != "success":
                failures[f"{panel.dashboard} / {panel.panel}: {panel.expr}"] = answer.get("error")
    assert failures == {}
