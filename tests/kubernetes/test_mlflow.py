"""stages/k8s runs compose's MLflow server: the same image and command, but for its database (external,
from a Secret) and the host names it answers to in the cluster."""

from __future__ import annotations

import yaml

from tests.kubernetes.conftest import container, only, repo_path


def compose_mlflow() -> dict:
    return yaml.safe_load(repo_path("compose.yaml").read_text())["services"]["mlflow"]


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--"))


def test_the_image_is_composes(rendered):
    image = container(rendered["stages/k8s"], "mlflow")["image"]
    kustomization = yaml.safe_load(repo_path("stages/k8s/kustomization.yaml").read_text())
    (override,) = kustomization["images"]
    # compose builds and tags it fast-mlops-pipeline:local from stages/Dockerfile; the cluster pulls it.
    assert compose_mlflow()["image"].split(":")[0] == override["name"]
    assert compose_mlflow()["build"]["dockerfile"] == "stages/Dockerfile"
    assert image == f"{override['newName']}:{override['newTag']}"


def test_the_command_is_composes_but_for_database_and_hosts(rendered):
    ours = container(rendered["stages/k8s"], "mlflow")["args"]
    theirs = compose_mlflow()["command"]
    assert [arg for arg in ours if not arg.startswith("--")] == ["mlflow", "server"]
    differing = {"--backend-store-uri", "--allowed-hosts"}
    assert {k: v for k, v in flags(ours).items() if k not in differing} == {
        k: v for k, v in flags(theirs).items() if k not in differing
    }
    assert flags(ours)["--artifacts-destination"].startswith("s3://")


def test_allowed_hosts_name_the_in_cluster_service(rendered):
    mlflow = rendered["stages/k8s"]
    service = only(mlflow, "Service", "mlflow")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    hosts = flags(container(mlflow, "mlflow")["args"])["--allowed-hosts"].split(",")
    for host in (
        name,
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ):
        assert host in hosts and f"{host}:*" in hosts


def test_postgres_is_external_and_named_by_a_secret(rendered):
    mlflow = rendered["stages/k8s"]
    server = container(mlflow, "mlflow")
    uri = flags(server["args"])["--backend-store-uri"]
    # No host, user or password in the URI: libpq's PG* variables, from the mlflow-database Secret.
    assert uri == "postgresql+psycopg2:///mlflow"
    assert {"secretRef": {"name": "mlflow-database"}} in server["envFrom"]
    (auth_ini,) = [m["data"]["basic_auth.ini"] for m in mlflow if "basic_auth.ini" in m.get("data", {})]
    assert "database_uri = postgresql+psycopg2:///mlflow_auth" in auth_ini
    assert "@postgres" not in auth_ini
    assert not [m for m in mlflow if m["kind"] in ("StatefulSet", "PersistentVolumeClaim")]
