"""compose.yaml, checked without a Docker engine: the compose spec's schema, the stack's rules for every
service, its secrets, and that every file it mounts or builds from exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from tests.monitoring.native import COMPOSE_FILE, load_yaml
from tests.support.processes import REPO_ROOT, require_tool

COMPOSE = load_yaml(COMPOSE_FILE)
SERVICES = COMPOSE["services"]
# `${NAME}`, `${NAME:-default}`, `${NAME:?message}` and friends, as compose interpolates them.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
SECRETS = {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ALERTMANAGER_WEBHOOK_URL"}
# cAdvisor's job is to read the host: its mounts are the only host paths in the stack.
HOST_READERS = {"cadvisor"}


def volume_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume entry."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run(
        [require_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_whole_stack_is_declared():
    assert set(SERVICES) >= {
        "api", "mlflow", "postgres", "prometheus", "alertmanager", "grafana", "cadvisor", "trainer",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(name):
    check = SERVICES[name].get("healthcheck", {})
    assert not check.get("disable", False)
    assert check.get("test") and check["test"][0] in {"CMD", "CMD-SHELL"}, name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_dependency_waits_for_health(name):
    depends_on = SERVICES[name].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{name}: the short list form cannot say service_healthy"
    for dependency, spec in depends_on.items():
        assert dependency in SERVICES
        assert spec["condition"] == "service_healthy", f"{name} -> {dependency}"
        assert "healthcheck" in SERVICES[dependency]


def test_the_dependencies_that_matter():
    def needs(name: str) -> set[str]:
        return set(SERVICES[name].get("depends_on", {}))

    assert needs("mlflow") == {"postgres"}
    assert "mlflow" in needs("api") and "mlflow" in needs("trainer")
    assert "prometheus" in needs("grafana")
    # Prometheus must start even when the api cannot: it is what reports the api down.
    assert "api" not in needs("prometheus")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_tag_is_pinned(name):
    service = SERVICES[name]
    assert "image" in service, f"{name}: a built service still names its image, so it is never `latest`"
    image = service["image"]
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag, f"{name}: {image} has no tag"
    assert tag != "latest"
    if "build" not in service:
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_memory_limit(name):
    service = SERVICES[name]
    limit = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory") or service.get(
        "mem_limit"
    )
    assert limit and re.fullmatch(r"\d+[KMG]", str(limit)), name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_state_lives_in_named_volumes_and_bind_mounts_are_read_only_repo_files(name):
    declared = set(COMPOSE.get("volumes", {}))
    for source, _target, mode in volume_mounts(SERVICES[name]):
        if source.startswith("./"):
            assert mode == "ro", f"{name}: the repository is mounted read-only"
            assert (REPO_ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
        elif source.startswith("/"):
            assert name in HOST_READERS and mode == "ro", f"{name} mounts the host's {source}"
        else:
            assert source in declared, f"{name}: volume {source} is not declared"


def test_every_declared_volume_is_used():
    used = {source for service in SERVICES.values() for source, _, _ in volume_mounts(service)}
    assert set(COMPOSE["volumes"]) <= used


def test_everything_the_stack_builds_from_exists():
    for name, service in SERVICES.items():
        if "build" in service:
            context = REPO_ROOT / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), name
    alertmanager = SERVICES["alertmanager"]
    mounted = {target: source for source, target, _ in volume_mounts(alertmanager)}
    for argument in alertmanager["entrypoint"][1:3]:
        assert argument in mounted, f"the entrypoint reads {argument}, which is not mounted"


def repository_path_in(service: str, container_path: str) -> Path | None:
    """The repository file or directory that `container_path` shows inside `service`, via its bind mounts."""
    for source, target, _ in volume_mounts(SERVICES[service]):
        if source.startswith("./") and (container_path == target or container_path.startswith(f"{target}/")):
            return REPO_ROOT / source / container_path.removeprefix(target).lstrip("/")
    return None


def test_the_files_prometheus_is_told_to_read_are_mounted_from_the_repository():
    flags = dict(
        arg.removeprefix("--").split("=", 1) for arg in SERVICES["prometheus"]["command"] if "=" in arg
    )
    config = repository_path_in("prometheus", flags["config.file"])
    assert config is not None and config.is_file()
    for pattern in load_yaml(config)["rule_files"]:
        in_container = str(PurePosixPath(flags["config.file"]).parent / pattern)
        rules = repository_path_in("prometheus", str(PurePosixPath(in_container).parent))
        assert rules is not None and list(rules.glob(PurePosixPath(pattern).name)), pattern


def test_grafana_s_home_dashboard_is_a_mounted_dashboard():
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    path = repository_path_in("grafana", home)
    assert path is not None and path.is_file()


def test_postgres_is_not_published():
    assert "ports" not in SERVICES["postgres"]
    assert "network_mode" not in SERVICES["postgres"]


def test_published_ports_listen_on_loopback_only():
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping}"


def test_mlflow_runs_on_postgres_with_proxied_artifacts_reachable_by_name():
    mlflow = SERVICES["mlflow"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in mlflow["command"] if arg.startswith("--"))
    assert args["backend-store-uri"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in args["backend-store-uri"]
    volumes = {target: source for source, target, _ in volume_mounts(mlflow)}
    assert volumes[args["artifacts-destination"]] in COMPOSE["volumes"]
    assert "--no-serve-artifacts" not in mlflow["command"]
    hosts = set(args["allowed-hosts"].split(","))
    assert {"mlflow", "mlflow:*", "localhost", "localhost:*"} <= hosts
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_the_api_and_the_trainer_use_the_stack_s_mlflow():
    assert SERVICES["api"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    trainer = SERVICES["trainer"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert trainer["profiles"] == ["trainer"]
    assert "dvc repro" in " ".join(trainer["command"])
    assert "restart" not in trainer, "a one-shot job must not be restarted"


def test_secrets_are_required_and_never_defaulted():
    text = COMPOSE_FILE.read_text()
    references = [match.groupdict() for match in VARIABLE.finditer(text)]
    assert {ref["name"] for ref in references} >= SECRETS
    for ref in references:
        if ref["name"] in SECRETS:
            assert ref["op"] == ":?" and ref["arg"].strip(), f"{ref['name']} must use ${{VAR:?message}}"
    assert "admin" not in str(SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"])


def test_no_service_sets_a_secret_literally():
    for name, service in SERVICES.items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert VARIABLE.fullmatch(str(value)), f"{name}: {key} is written in compose.yaml"


def test_env_example_lists_exactly_the_variables_compose_reads_with_no_usable_secret():
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    assert set(values) == {match["name"] for match in VARIABLE.finditer(COMPOSE_FILE.read_text())}
    assert {name: values[name] for name in SECRETS} == dict.fromkeys(SECRETS, "")


def test_dot_env_is_ignored_by_git():
    result = subprocess.run(["git", "check-ignore", "--quiet", ".env"], cwd=REPO_ROOT)
    assert result.returncode == 0, ".env would be committed"
