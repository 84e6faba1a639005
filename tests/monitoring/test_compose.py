"""compose.yaml, checked without a Docker engine: the compose spec's schema, the stack's rules for every
service (least privilege included: capabilities, a read-only root, limits, networks, digests), its
secrets, and that every file it mounts or builds from exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from tests.monitoring.native import COMPOSE_FILE, PROMETHEUS_CONFIG, load_yaml
from tests.support.processes import REPO_ROOT, require_tool

COMPOSE = load_yaml(COMPOSE_FILE)
SERVICES = COMPOSE["services"]
# `${NAME}`, `${NAME:-default}`, `${NAME:?message}` and friends, as compose interpolates them.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
SECRETS = {
    "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ALERTMANAGER_WEBHOOK_URL",
    "PROMETHEUS_PASSWORD", "ALERTMANAGER_PASSWORD", "METRICS_API_KEY",
    "MLFLOW_ADMIN_PASSWORD", "MLFLOW_PIPELINE_PASSWORD", "MLFLOW_DEPLOYER_PASSWORD", "MLFLOW_API_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
}  # fmt: skip
# cAdvisor's job is to read the host: its mounts are the only host paths in the stack, and only these
# (README, "The stack under least privilege", says why each).
HOST_READERS = {"cadvisor"}
CADVISOR_HOST_PATHS = {"/sys", "/proc", "/var/lib/docker", "/var/run/docker.sock"}
# `dvc repro` writes dvc.lock and data/ into its work tree (/app): the one writable root filesystem.
READ_ONLY_EXEMPT = {"trainer"}
# Images whose digest no source reachable from here could give; pinned by tag only until one is checked
# against the registry (`docker buildx imagetools inspect prom/prometheus:v2.42.0`). Not to grow.
UNPINNED_DIGESTS = {"prometheus", "alertmanager"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
BACKEND, MONITORING = "backend", "monitoring"


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


def one_shot(name: str) -> bool:
    """A job that runs once and exits: never restarted, waited for by its completion."""
    return "restart" not in SERVICES[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_dependency_waits_for_health_or_for_a_job_to_finish(name):
    depends_on = SERVICES[name].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{name}: the short list form cannot say service_healthy"
    for dependency, spec in depends_on.items():
        assert dependency in SERVICES
        expected = "service_completed_successfully" if one_shot(dependency) else "service_healthy"
        assert spec["condition"] == expected, f"{name} -> {dependency}"
        assert "healthcheck" in SERVICES[dependency]


def needs(name: str) -> set[str]:
    """Everything a service waits for, directly or through what it waits for."""
    direct = set(SERVICES[name].get("depends_on", {}))
    return direct.union(*(needs(dependency) for dependency in direct))


def test_the_dependencies_that_matter():
    assert needs("mlflow") == {"postgres", "storage", "storage-bucket"}
    # Nobody logs in before the users exist.
    for name in ("api", "trainer", "promoter"):
        assert "registry-access" in needs(name) and "mlflow" in needs(name), name
    assert "prometheus" in needs("grafana")
    assert {"monitoring-auth"} <= needs("prometheus") & needs("alertmanager")
    # Prometheus must start even when the api cannot: it is what reports the api down.
    assert "api" not in needs("prometheus")


def built_here(service: dict) -> bool:
    """The stack's own images (the pipeline's and the api's): built by compose, or by it for others."""
    return "build" in service or str(service["image"]).endswith(":local")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_tag_is_pinned(name):
    service = SERVICES[name]
    assert "image" in service, f"{name}: a built service still names its image, so it is never `latest`"
    image = DIGEST.sub("", service["image"])
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag, f"{name}: {image} has no tag"
    assert tag != "latest"
    if not built_here(service):
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_pulled_image_is_pinned_by_tag_and_digest(name):
    """The form only: a wrong digest passes every offline check (the note of issue 13 says where each
    came from). A tag alone can be re-pushed; tag@digest cannot, and still says which version it is."""
    service = SERVICES[name]
    if built_here(service) or name in UNPINNED_DIGESTS:
        return
    assert DIGEST.search(service["image"]), f"{name}: {service['image']} has no @sha256:<64 hex> digest"
    assert ":" in service["image"].split("@")[0].rsplit("/", 1)[-1], f"{name}: a digest needs its tag too"


def test_the_unpinned_digests_are_only_the_known_ones():
    unpinned = {name for name, service in SERVICES.items()
                if not built_here(service) and not DIGEST.search(service["image"])}  # fmt: skip
    assert unpinned == UNPINNED_DIGESTS


# ---------------------------------------------------------------- least privilege
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_drops_capabilities_and_privileges(name):
    service = SERVICES[name]
    assert service.get("cap_drop") == ["ALL"], name
    assert "cap_add" not in service, name
    assert "no-new-privileges:true" in service.get("security_opt", []), name
    assert not service.get("privileged", False), name
    assert "devices" not in service, name
    assert service.get("user") not in {"0", "root", "0:0", "root:root"}, f"{name} runs as root"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_read_only_root_and_bounded_processes(name):
    service = SERVICES[name]
    if name in READ_ONLY_EXEMPT:
        assert service.get("read_only") is False, f"{name}: the exemption is written out in compose.yaml"
    else:
        assert service.get("read_only") is True, name
    assert isinstance(service.get("pids_limit"), int) and 0 < service["pids_limit"] <= 1024, name
    nofile = service.get("ulimits", {}).get("nofile", {})
    assert 0 < nofile.get("soft", 0) <= nofile.get("hard", 0) <= 65536, name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_writable_path_is_a_tmpfs_or_a_named_volume(name):
    """A read-only service writes only where compose says: its tmpfs mounts and its named volumes."""
    service = SERVICES[name]
    for entry in service.get("tmpfs", []):
        assert str(entry).startswith("/"), (name, entry)
    for source, _target, mode in volume_mounts(service):
        if mode != "ro":
            assert not source.startswith(("./", "/")), f"{name}: {source} is writable"


def networks_of(name: str) -> set[str]:
    return set(SERVICES[name].get("networks", []))


def test_the_backend_and_the_monitoring_networks_are_apart():
    assert set(COMPOSE["networks"]) == {BACKEND, MONITORING}
    for name in ("postgres", "mlflow", "registry-access", "trainer", "promoter"):
        assert networks_of(name) == {BACKEND}, name
    for name in ("prometheus", "alertmanager", "grafana", "cadvisor"):
        assert networks_of(name) == {MONITORING}, name
    # The api alone is on both: the registry on one side, Prometheus' scrape on the other.
    assert networks_of("api") == {BACKEND, MONITORING}
    assert SERVICES["monitoring-auth"]["network_mode"] == "none"
    for name, service in SERVICES.items():
        assert "network_mode" not in service or service["network_mode"] == "none", name
        assert "networks" in service or "network_mode" in service, f"{name} is on the default network"


def test_cadvisor_reads_only_what_it_needs():
    cadvisor = SERVICES["cadvisor"]
    host = {source.rstrip("/") for source, _, _ in volume_mounts(cadvisor) if source.startswith("/")}
    assert host == CADVISOR_HOST_PATHS
    assert all(mode == "ro" for _, _, mode in volume_mounts(cadvisor))
    assert "/var/run" not in host and "/" not in host


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


def flags(service: str) -> dict[str, str]:
    command = SERVICES[service]["command"]
    return dict(
        arg.removeprefix("--").split("=", 1) for arg in command if str(arg).startswith("--") and "=" in arg
    )


def test_prometheus_has_no_lifecycle_api_and_both_answer_only_with_basic_auth():
    assert not any("lifecycle" in str(arg) for arg in SERVICES["prometheus"]["command"])
    for service in ("prometheus", "alertmanager"):
        web_config = PurePosixPath(flags(service)["web.config.file"])
        mounted = {target: source for source, target, _ in volume_mounts(SERVICES[service])}
        assert mounted[str(web_config.parent)] == "monitoring-auth", service
        assert web_config.name == f"{service}-web.yml"
        # Their healthchecks log in too: every endpoint, /-/healthy included, needs the password.
        check = " ".join(SERVICES[service]["healthcheck"]["test"])
        assert f"{web_config.parent}/{service}.password" in check, service
    job = SERVICES["monitoring-auth"]
    assert job["command"][1] == "/monitoring-auth/web_config.py"
    assert (
        repository_path_in("monitoring-auth", job["command"][1])
        == REPO_ROOT / "monitoring/auth/web_config.py"
    )


def test_mlflow_runs_its_basic_auth_app_and_every_client_logs_in_as_its_own_user():
    mlflow = SERVICES["mlflow"]
    assert flags("mlflow")["app-name"] == "basic-auth"
    config = mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert (REPO_ROOT / PurePosixPath(config).relative_to("/app")).is_file()  # stages/ is copied to /app
    users = {"api": "api", "trainer": "pipeline", "promoter": "deployer"}
    for name, user in users.items():
        environment = SERVICES[name]["environment"]
        assert environment["MLFLOW_TRACKING_USERNAME"] == user, name
        assert f"MLFLOW_{user.upper()}_PASSWORD" in environment["MLFLOW_TRACKING_PASSWORD"], name
    # The password that can move production reaches only the deployer's job and the one that sets it.
    holders = {
        name
        for name, service in SERVICES.items()
        if "MLFLOW_DEPLOYER_PASSWORD" in str(service.get("environment"))
    }
    assert holders == {"promoter", "registry-access"}
    assert SERVICES["promoter"]["profiles"] == ["deployer"]


def test_the_files_prometheus_is_told_to_read_are_mounted_from_the_repository():
    config_file = flags("prometheus")["config.file"]
    config = repository_path_in("prometheus", config_file)
    assert config is not None and config.is_file()
    for pattern in load_yaml(config)["rule_files"]:
        in_container = str(PurePosixPath(config_file).parent / pattern)
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
    # Artifacts in the storage service's bucket, reached by name; the server alone holds the keys.
    assert args["artifacts-destination"].startswith("s3://")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://storage:8333"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(mlflow["environment"])
    for client in ("api", "trainer", "promoter"):
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(SERVICES[client]["environment"]), (
            client
        )
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


def test_only_prometheus_reads_the_api_metrics_with_the_key_monitoring_auth_writes():
    api, prometheus = SERVICES["api"], SERVICES["prometheus"]
    assert "monitoring-auth" in needs("api")
    (api_mount,) = [target for source, target, mode in volume_mounts(api) if source == "monitoring-auth"]
    assert ("monitoring-auth", api_mount, "ro") in volume_mounts(api)
    hashes = PurePosixPath(api["environment"]["METRICS_API_KEYS_FILE"])
    assert hashes.parent == PurePosixPath(api_mount) and hashes.name == "metrics-api-keys.txt"
    scrape = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}["api"]
    key_file = PurePosixPath(scrape["authorization"]["credentials_file"])
    assert scrape["authorization"]["type"] == "Bearer" and key_file.name == "api-metrics.key"
    (prometheus_mount,) = [t for s, t, _ in volume_mounts(prometheus) if s == "monitoring-auth"]
    assert key_file.parent == PurePosixPath(prometheus_mount)
    assert "METRICS_API_KEY" in SERVICES["monitoring-auth"]["environment"]
