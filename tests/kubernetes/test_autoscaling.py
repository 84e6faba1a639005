"""One autoscaler per Deployment in every rendered kustomization: KEDA makes its own HPA, and two on one
Deployment fight. The base scales on CPU, prod on the request rate per pod with at least two replicas."""

from __future__ import annotations

import pytest

from tests.kubernetes.conftest import only
from tests.kubernetes.manifests import KUSTOMIZATIONS, scalers_per_deployment


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_exactly_one_scaler_per_deployment(rendered, kustomization):
    counts = scalers_per_deployment(rendered[kustomization])
    if kustomization == "monitoring/k8s":
        assert counts == {}
    else:
        assert counts and set(counts.values()) == {1}, counts


def test_the_count_sees_an_hpa_beside_a_scaled_object(rendered):
    # The base's HPA left in prod beside its ScaledObject is what the test above must catch.
    prod = rendered["api/k8s/overlays/prod"]
    base_hpa = only(rendered["api/k8s/base"], "HorizontalPodAutoscaler")
    assert scalers_per_deployment([*prod, base_hpa]) == {"api": 2}


def test_base_and_dev_scale_on_cpu_with_autoscaling_v2(rendered):
    for kustomization in ("api/k8s/base", "api/k8s/overlays/dev"):
        hpa = only(rendered[kustomization], "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert [m["kind"] for m in rendered[kustomization] if m["kind"] == "ScaledObject"] == []


def test_prod_scales_on_requests_per_pod_from_two_replicas(rendered):
    prod = rendered["api/k8s/overlays/prod"]
    assert [m for m in prod if m["kind"] == "HorizontalPodAutoscaler"] == []
    spec = only(prod, "ScaledObject")["spec"]
    assert spec["minReplicaCount"] >= 2  # a PodDisruptionBudget over one replica blocks drains
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    prometheus = next(trigger for trigger in spec["triggers"] if trigger["type"] == "prometheus")
    # Per pod: KEDA divides the query by the replica count.
    assert prometheus["metricType"] == "AverageValue"
    query = prometheus["metadata"]["query"]
    namespace = only(prod, "Deployment")["metadata"]["namespace"]
    assert "http_requests_total" in query and 'job="api"' in query and f'namespace="{namespace}"' in query
    assert float(prometheus["metadata"]["threshold"]) > 0


def test_the_request_threshold_and_the_cpu_target_are_the_same_fraction_of_a_core(rendered):
    # Both derive from `make bench`'s per-core rate (the comments say how): the prod threshold is the
    # base's CPU target, as a share of the low end of that rate, per one-core pod.
    measured_low_end = 6_700  # README "How fast": single-record req/s of one process
    hpa = only(rendered["api/k8s/base"], "HorizontalPodAutoscaler")
    share = hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] / 100
    prod = rendered["api/k8s/overlays/prod"]
    (trigger,) = [t for t in only(prod, "ScaledObject")["spec"]["triggers"] if t["type"] == "prometheus"]
    assert float(trigger["metadata"]["threshold"]) == pytest.approx(share * measured_low_end, rel=0.02)
    cpu = only(prod, "Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert cpu["requests"]["cpu"] == cpu["limits"]["cpu"] == "1"


def test_a_fallback_only_beside_average_value_triggers(rendered):
    # KEDA's rule: fallback replicas are for AverageValue triggers only, never beside cpu or memory.
    for manifests in rendered.values():
        for scaled_object in (m for m in manifests if m["kind"] == "ScaledObject"):
            if "fallback" in scaled_object["spec"]:
                for trigger in scaled_object["spec"]["triggers"]:
                    assert trigger["type"] not in ("cpu", "memory")
                    assert trigger.get("metricType") == "AverageValue"
