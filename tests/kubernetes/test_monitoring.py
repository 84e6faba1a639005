"""monitoring/k8s: the generated PrometheusRules and dashboards ConfigMap are what the generator writes
from their sources (never a second copy by hand), each runbook has its Kubernetes line, the rules pass
promtool, and the ServiceMonitor scrapes the api's Service as job `api`."""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.kubernetes.conftest import only, repo_path
from tests.support.processes import require_tool


def test_generated_files_are_what_the_generator_writes(generator):
    for path, text in generator.outputs().items():
        assert path.exists(), f"{path}: run `make k8s-generate`"
        assert path.read_text() == text, f"{path} is stale or edited by hand: run `make k8s-generate`"


def test_the_check_fails_on_a_stale_copy(generator, tmp_path, monkeypatch):
    stale = tmp_path / "prometheusrule-api.yaml"
    stale.write_text("# edited by hand\n")
    outputs = generator.outputs()
    monkeypatch.setattr(generator, "outputs", lambda: {stale: next(iter(outputs.values()))})
    monkeypatch.setattr(generator, "REPO_ROOT", tmp_path)
    assert generator.main(["--check"]) == 1


def generated_rules(rendered) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in rendered["monitoring/k8s"] if m["kind"] == "PrometheusRule"}


def test_rules_are_the_sources_but_for_the_runbooks_kubernetes_line(rendered, generator):
    rules = generated_rules(rendered)
    assert set(rules) == {f"fast-mlops-{name.removesuffix('.yml')}" for name in generator.RULE_FILES}
    runbooks = yaml.safe_load(repo_path("monitoring/k8s/runbooks.yml").read_text())
    for name in generator.RULE_FILES:
        source = yaml.safe_load(repo_path(f"monitoring/prometheus/rules/{name}").read_text())["groups"]
        groups = rules[f"fast-mlops-{name.removesuffix('.yml')}"]["spec"]["groups"]
        for ours, theirs in zip(groups, source, strict=True):
            for rule, original in zip(ours["rules"], theirs["rules"], strict=True):
                if "alert" in rule:
                    runbook, kubernetes = rule["annotations"]["runbook"].split("\nKubernetes: ")
                    assert runbook == original["annotations"]["runbook"]
                    assert kubernetes == " ".join(runbooks[rule["alert"]].split())
                    rule = {**rule, "annotations": {**rule["annotations"], "runbook": runbook}}
                assert rule == original


def test_compose_only_rules_are_not_generated(generator):
    # cAdvisor's compose labels, and the stack's own scrape targets.
    assert "containers.yml" not in generator.RULE_FILES and "targets.yml" not in generator.RULE_FILES
    assert "containers.json" not in generator.DASHBOARD_FILES


def test_generated_rules_pass_promtool(rendered, tmp_path):
    promtool = require_tool("promtool")
    for name, rule in generated_rules(rendered).items():
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        result = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_config_map_carries_the_sidecar_label_and_the_sources(rendered, generator):
    config_map = only(rendered["monitoring/k8s"], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name in generator.DASHBOARD_FILES:
        source = repo_path(f"monitoring/grafana/dashboards/{name}").read_text()
        assert json.loads(config_map["data"][name]) == json.loads(source)


def test_service_monitor_scrapes_the_api_service_as_job_api(rendered):
    monitor = only(rendered["monitoring/k8s"], "ServiceMonitor")["spec"]
    prod = rendered["api/k8s/overlays/prod"]
    service = only(prod, "Service", "api")
    assert service["metadata"]["namespace"] in monitor["namespaceSelector"]["matchNames"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The existing rules and dashboards ask for job="api" (compose's scrape job).
    assert {"action": "replace", "targetLabel": "job", "replacement": "api"} in endpoint["relabelings"]
    # /metrics takes only Prometheus' key.
    assert endpoint["bearerTokenSecret"]["name"]
    compose_interval = yaml.safe_load(repo_path("monitoring/prometheus/prometheus.yml").read_text())
    assert endpoint["interval"] == compose_interval["global"]["scrape_interval"]
