"""Each Deployment's pods are selected by an ingress and an egress policy, so that what is not listed is
denied, and the api and MLflow admit each other: the api's egress names MLflow's namespace, labels and
port as stages/k8s renders them, and MLflow's ingress admits the api's pods."""

from __future__ import annotations

import pytest

from tests.kubernetes.conftest import only

APPLIED = ("api/k8s/overlays/dev", "api/k8s/overlays/prod", "stages/k8s")


def selects(policy: dict, labels: dict[str, str]) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def policies(manifests, direction: str, labels: dict[str, str]) -> list[dict]:
    return [
        m
        for m in manifests
        if m["kind"] == "NetworkPolicy" and direction in m["spec"]["policyTypes"] and selects(m, labels)
    ]


def pod_labels(manifests, deployment: str) -> dict[str, str]:
    return only(manifests, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("kustomization", APPLIED)
def test_every_pod_is_isolated_both_ways(rendered, kustomization):
    for deployment in (m for m in rendered[kustomization] if m["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert policies(rendered[kustomization], "Ingress", labels), deployment["metadata"]["name"]
        assert policies(rendered[kustomization], "Egress", labels), deployment["metadata"]["name"]


def peer_namespaces(rules: list[dict], key: str) -> set[str]:
    return {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in rules
        for peer in rule.get(key, [])
        if "matchLabels" in peer.get("namespaceSelector", {})
    }


@pytest.mark.parametrize("overlay", ("api/k8s/overlays/dev", "api/k8s/overlays/prod"))
def test_api_admits_the_ingress_controller_and_prometheus_only(rendered, overlay):
    manifests = rendered[overlay]
    (ingress,) = policies(manifests, "Ingress", pod_labels(manifests, "api"))
    rules = ingress["spec"]["ingress"]
    assert peer_namespaces(rules, "from") == {"ingress-nginx", "monitoring"}
    # No rule without peers (that would admit every source).
    assert all(rule.get("from") for rule in rules)
    assert {port["port"] for rule in rules for port in rule["ports"]} == {"http"}


@pytest.mark.parametrize("overlay", ("api/k8s/overlays/dev", "api/k8s/overlays/prod"))
def test_api_reaches_dns_and_mlflow_only(rendered, overlay):
    manifests = rendered[overlay]
    (egress,) = policies(manifests, "Egress", pod_labels(manifests, "api"))
    rules = egress["spec"]["egress"]
    assert all(rule.get("to") for rule in rules)
    assert peer_namespaces(rules, "to") == {"kube-system", "fast-mlops-registry"}
    mlflow = rendered["stages/k8s"]
    (to_mlflow,) = [rule for rule in rules if peer_namespaces([rule], "to") == {"fast-mlops-registry"}]
    (peer,) = to_mlflow["to"]
    assert only(mlflow, "Deployment", "mlflow")["metadata"]["namespace"] == "fast-mlops-registry"
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels(mlflow, "mlflow").items()
    (service_port,) = only(mlflow, "Service", "mlflow")["spec"]["ports"]
    assert [port["port"] for port in to_mlflow["ports"]] == [service_port["port"]]


@pytest.mark.parametrize("overlay", ("api/k8s/overlays/dev", "api/k8s/overlays/prod"))
def test_mlflow_admits_the_api_pods_of_each_overlay(rendered, overlay):
    mlflow = rendered["stages/k8s"]
    (ingress,) = policies(mlflow, "Ingress", pod_labels(mlflow, "mlflow"))
    api_namespace = only(rendered[overlay], "Deployment", "api")["metadata"]["namespace"]
    api_labels = pod_labels(rendered[overlay], "api")
    admitted = [
        peer
        for rule in ingress["spec"]["ingress"]
        for peer in rule["from"]
        if peer["podSelector"]["matchLabels"].items() <= api_labels.items()
        and any(
            api_namespace in expression["values"]
            for expression in peer["namespaceSelector"].get("matchExpressions", [])
        )
    ]
    assert admitted


def test_the_api_config_names_mlflow_by_its_service(rendered):
    mlflow = rendered["stages/k8s"]
    service = only(mlflow, "Service", "mlflow")
    address = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    (port,) = service["spec"]["ports"]
    for overlay in ("api/k8s/overlays/dev", "api/k8s/overlays/prod"):
        config_map = next(m for m in rendered[overlay] if m["kind"] == "ConfigMap")
        assert config_map["data"]["MLFLOW_TRACKING_URI"] == f"{address}:{port['port']}"
