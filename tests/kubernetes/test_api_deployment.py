"""The api's Deployment as every overlay renders it: probes, graceful shutdown, resources, least
privilege, its scratch volumes, its keys and config, its spread, its Service and its budget."""

from __future__ import annotations

import json

import pytest

from api.settings import Settings
from tests.kubernetes.conftest import container, only, repo_path

OVERLAYS = ("api/k8s/overlays/dev", "api/k8s/overlays/prod")


def pod_spec(manifests) -> dict:
    return only(manifests, "Deployment", "api")["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_ready_health_and_wait_for_a_model_download(rendered, overlay):
    api = container(rendered[overlay], "api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    # Minutes, not the seconds a liveness probe gives: a model download and its parity check.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert api[probe]["httpGet"]["port"] == "http"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_waits_then_leaves_time_to_drain(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    delay = container(rendered[overlay], "api")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert delay >= 5
    # After the delay, the in-flight requests' longest read deadline must still fit in the grace period.
    longest_read = Settings.model_fields["request_read_timeout_seconds"].default
    assert spec["terminationGracePeriodSeconds"] >= delay + longest_read


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_and_limits_are_set(rendered, overlay):
    resources = container(rendered[overlay], "api")["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_least_privilege(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    context = container(rendered[overlay], "api")["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    assert spec["automountServiceAccountToken"] is False
    account = only(rendered[overlay], "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def config(manifests) -> dict[str, str]:
    (source,) = container(manifests, "api")["envFrom"]
    return only(manifests, "ConfigMap", source["configMapRef"]["name"])["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scratch_paths_are_empty_dirs(rendered, overlay):
    # The root filesystem is read-only: /tmp, the model download directory (TMPDIR) and the
    # multiprocess metrics directory are emptyDirs.
    volumes = {volume["name"]: volume for volume in pod_spec(rendered[overlay])["volumes"]}
    mounts = {
        mount["mountPath"]: mount["name"] for mount in container(rendered[overlay], "api")["volumeMounts"]
    }
    for path in ("/tmp", config(rendered[overlay])["TMPDIR"], "/run/prometheus-multiproc"):
        assert "emptyDir" in volumes[mounts[path]], path
        assert volumes[mounts[path]]["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_key_files_come_from_the_secret_and_config_from_the_config_map(rendered, overlay):
    settings = config(rendered[overlay])
    # Every setting is one the service reads (api/settings.py), or the documented WORKERS/TMPDIR.
    known = {name.upper() for name in Settings.model_fields} | {"TMPDIR", "WORKERS"}
    assert set(settings) <= known, set(settings) - known
    volumes = {volume["name"]: volume for volume in pod_spec(rendered[overlay])["volumes"]}
    mounts = {mount["name"]: mount for mount in container(rendered[overlay], "api")["volumeMounts"]}
    for variable in ("API_KEYS_FILE", "METRICS_API_KEYS_FILE", "FEEDBACK_API_KEYS_FILE"):
        directory, _, _ = settings[variable].rpartition("/")
        (name,) = [name for name, mount in mounts.items() if mount["mountPath"] == directory]
        assert volumes[name]["secret"]["secretName"] == "api-keys"
        assert mounts[name]["readOnly"] is True
    # No secret in the environment: the MLflow credentials are a file too.
    assert all("valueFrom" not in variable for variable in container(rendered[overlay], "api").get("env", []))
    assert all("secretRef" not in source for source in container(rendered[overlay], "api")["envFrom"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_spread_across_nodes(rendered, overlay):
    (spread,) = pod_spec(rendered[overlay])["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    pod_labels = only(rendered[overlay], "Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    expected = "DoNotSchedule" if overlay.endswith("prod") else "ScheduleAnyway"
    assert spread["whenUnsatisfiable"] == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_budget_select_the_pods(rendered, overlay):
    deployment = only(rendered[overlay], "Deployment", "api")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = only(rendered[overlay], "Service", "api")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {port["name"] for port in container(rendered[overlay], "api")["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    budget = only(rendered[overlay], "PodDisruptionBudget", "api")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # Never a budget that a single replica could not satisfy during a drain.
    assert budget["spec"].get("maxUnavailable", 0) >= 1


def test_prod_namespace_enforces_restricted_pod_security(rendered):
    namespace = only(rendered["api/k8s/overlays/prod"], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_image_cmd_serves_on_the_container_port(rendered, overlay):
    # The Deployment leaves the command to the image (api/Dockerfile's CMD), so the port must agree.
    api = container(rendered[overlay], "api")
    assert "command" not in api and "args" not in api
    (cmd,) = [
        line for line in repo_path("api/Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    ]
    arguments = json.loads(cmd.removeprefix("CMD "))
    port = int(arguments[arguments.index("--port") + 1])
    assert arguments[arguments.index("--host") + 1] == "0.0.0.0"
    assert [p["containerPort"] for p in api["ports"] if p["name"] == "http"] == [port]
