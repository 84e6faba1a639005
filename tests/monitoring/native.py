"""The stack's monitoring files, run natively: Prometheus and Alertmanager on loopback, an in-test webhook,
and the queries of the Grafana dashboards. Shared by tests/monitoring and tests/e2e.

With a WebAuth (monitoring/auth/web_config.py run as compose runs it), Prometheus and Alertmanager start
with their web config files, behind basic auth, and Prometheus sends the password files; without one,
both run open and the config's basic_auth blocks are dropped."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.support.processes import REPO_ROOT, free_port, require_tool, running, subprocess_env, tail

MONITORING = REPO_ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
RULES_DIR = MONITORING / "prometheus" / "rules"
RULE_TESTS_DIR = MONITORING / "prometheus" / "tests"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
ALERTMANAGER_ENTRYPOINT = MONITORING / "alertmanager" / "entrypoint.sh"
WEB_CONFIG_SCRIPT = MONITORING / "auth" / "web_config.py"
GRAFANA_DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources"
GRAFANA_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards"
DASHBOARDS_DIR = MONITORING / "grafana" / "dashboards"
COMPOSE_FILE = REPO_ROOT / "compose.yaml"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for path in rule_files() for group in load_yaml(path)["groups"] for rule in group["rules"]
            if "alert" in rule]  # fmt: skip


def recorded_names() -> set[str]:
    return {rule["record"] for path in rule_files() for group in load_yaml(path)["groups"]
            for rule in group["rules"] if "record" in rule}  # fmt: skip


# ---------------------------------------------------------------- basic auth
@dataclass(frozen=True)
class WebAuth:
    """The files web_config.py wrote: a web config and a password file per service."""

    directory: Path

    def web_config(self, service: str) -> Path:
        return self.directory / f"{service}-web.yml"

    def password_file(self, service: str) -> Path:
        return self.directory / f"{service}.password"

    @property
    def metrics_api_keys_file(self) -> Path:
        """The api's METRICS_API_KEYS_FILE: the hash of the key Prometheus scrapes it with."""
        return self.directory / "metrics-api-keys.txt"

    @property
    def metrics_key(self) -> str:
        return (self.directory / "api-metrics.key").read_text()

    def header(self, service: str) -> str:
        token = f"{service}:{self.password_file(service).read_text()}".encode()
        return f"Basic {base64.b64encode(token).decode()}"


def web_auth(directory: Path) -> WebAuth:
    """monitoring/auth/web_config.py, run as compose's monitoring-auth job runs it, with fresh passwords."""
    env = subprocess_env(
        PROMETHEUS_PASSWORD=secrets.token_hex(16),
        ALERTMANAGER_PASSWORD=secrets.token_hex(16),
        METRICS_API_KEY=secrets.token_hex(16),
    )
    subprocess.run([sys.executable, str(WEB_CONFIG_SCRIPT), str(directory)], env=env, check=True,
                   capture_output=True)  # fmt: skip
    return WebAuth(directory)


def _authorized(request: str | urllib.request.Request, authorization: str | None) -> urllib.request.Request:
    request = urllib.request.Request(request) if isinstance(request, str) else request
    if authorization:
        request.add_header("Authorization", authorization)
    return request


# ---------------------------------------------------------------- Prometheus
def loopback_prometheus_config(
    targets: Mapping[str, str], rules_dir: Path = RULES_DIR, auth: WebAuth | None = None
) -> dict[str, Any]:
    """prometheus.yml with only its target addresses replaced (compose name -> loopback address), and its
    rule_files pointed at `rules_dir` (the project's rules, or a copy of them), since the result is
    written elsewhere. An address missing from `targets` raises KeyError: the test must know them all.
    The basic_auth password files and the api's bearer key file point at `auth`'s, or, without auth, the
    blocks are dropped."""
    config = load_yaml(PROMETHEUS_CONFIG)
    for section in [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]:
        for static in section["static_configs"]:
            static["targets"] = [targets[target] for target in static["targets"]]
        if "basic_auth" in section:
            if auth is None:
                del section["basic_auth"]
            else:
                name = PurePosixPath(section["basic_auth"]["password_file"]).stem
                section["basic_auth"]["password_file"] = str(auth.password_file(name))
        if "authorization" in section:
            if auth is None:
                del section["authorization"]
            else:
                name = PurePosixPath(section["authorization"]["credentials_file"]).name
                section["authorization"]["credentials_file"] = str(auth.directory / name)
    config["rule_files"] = [
        str(rules_dir / Path(pattern).relative_to("rules")) for pattern in config["rule_files"]
    ]
    return config


def rules_with_short_for(dest: Path, duration: str) -> Path:
    """A copy of the rule files in which every `for:` is `duration`; everything else is identical."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in rule_files():
        content = load_yaml(path)
        for group in content["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = duration
        (dest / path.name).write_text(yaml.safe_dump(content, sort_keys=False))
    return dest


@contextmanager
def running_prometheus(
    config: dict[str, Any], workdir: Path, port: int | None = None, auth: WebAuth | None = None
) -> Iterator[str]:
    binary = require_tool("prometheus")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://127.0.0.1:{port}"
    args = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *([f"--web.config.file={auth.web_config('prometheus')}"] if auth else []),
    ]
    authorization = auth.header("prometheus") if auth else None
    with running(args, workdir / "prometheus.log") as process:
        wait_until_ready(f"{url}/-/ready", process, workdir / "prometheus.log", 60, authorization)
        yield url


def query(prometheus_url: str, expr: str, authorization: str | None = None) -> dict[str, Any]:
    """An instant query; returns Prometheus' JSON answer, errors included (HTTP 400/422 carry JSON too)."""
    data = urllib.parse.urlencode({"query": expr}).encode()
    request = urllib.request.Request(f"{prometheus_url}/api/v1/query", data=data, method="POST")
    try:
        with urllib.request.urlopen(_authorized(request, authorization), timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        with error:  # an unclosed error response is a ResourceWarning, and warnings are errors here
            return json.loads(error.read() or b"{}") or {"status": "error", "error": str(error)}


def get_json(url: str, authorization: str | None = None) -> Any:
    with urllib.request.urlopen(_authorized(url, authorization), timeout=10) as response:
        return json.load(response)


def http_status(url: str, authorization: str | None = None) -> int | None:
    """The status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(_authorized(url, authorization), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_until_ready(
    url: str, process: subprocess.Popen, log_path: Path, timeout: float, authorization: str | None = None
) -> None:
    """Poll until `url` answers 200. Unlike a bare urlopen loop, this closes the 503s of a server that is
    still starting: an unclosed error response is a ResourceWarning, and warnings are errors here."""
    wait_until(lambda: process.poll() is not None or http_status(url, authorization) == 200, timeout,
               interval=0.25, what=f"{url} answers 200")  # fmt: skip
    if process.poll() is not None:
        raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{tail(log_path)}")


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 1.0, what: str = "") -> Any:
    """Poll until `condition()` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- Alertmanager and its webhook
@dataclass
class WebhookReceiver:
    """An HTTP endpoint that records every notification Alertmanager posts to it."""

    url: str
    notifications: list[dict[str, Any]]
    _arrived: threading.Condition

    def alerts(self, alertname: str) -> list[tuple[str, dict[str, Any]]]:
        """(receiver, alert) for every `alertname` alert in every notification so far."""
        with self._arrived:
            return self._alerts(alertname)

    def wait_for(self, alertname: str, timeout: float, status: str = "firing") -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [
                    (receiver, alert)
                    for receiver, alert in self._alerts(alertname)
                    if alert["status"] == status
                ]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {status} {alertname} reached the webhook within {timeout}s; "
                                       f"got {self.notifications}")  # fmt: skip
                self._arrived.wait(remaining)

    def _alerts(self, alertname: str) -> list[tuple[str, dict[str, Any]]]:
        return [(notification["receiver"], alert) for notification in self.notifications
                for alert in notification["alerts"] if alert["labels"].get("alertname") == alertname]  # fmt: skip


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    notifications: list[dict[str, Any]] = []
    arrived = threading.Condition()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with arrived:
                notifications.append(json.loads(body))
                arrived.notify_all()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebhookReceiver(f"http://127.0.0.1:{server.server_port}/alerts", notifications, arrived)
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_alertmanager(
    webhook_url: str, workdir: Path, port: int | None = None, auth: WebAuth | None = None
) -> Iterator[str]:
    """The project's alertmanager.yml, started through the project's entrypoint.sh exactly as compose does,
    with ALERTMANAGER_WEBHOOK_URL pointing at `webhook_url`."""
    binary = require_tool("prometheus-alertmanager")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    args = [
        "sh", str(ALERTMANAGER_ENTRYPOINT), str(ALERTMANAGER_CONFIG), str(workdir / "alertmanager.yml"),
        binary,
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        *([f"--web.config.file={auth.web_config('alertmanager')}"] if auth else []),
    ]  # fmt: skip
    env = subprocess_env(ALERTMANAGER_WEBHOOK_URL=webhook_url)
    authorization = auth.header("alertmanager") if auth else None
    with running(args, workdir / "alertmanager.log", env=env) as process:
        wait_until_ready(f"{url}/-/ready", process, workdir / "alertmanager.log", 30, authorization)
        yield url


# ---------------------------------------------------------------- Grafana dashboards
@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    tags: tuple[str, ...]
    panel: str
    expr: str


def dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def grafana_variables() -> dict[str, str]:
    """Values for Grafana's built-in variables, as Grafana would compute them for this stack: the
    interval is the scrape interval, and $__rate_interval four of them."""
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    seconds = int(re.fullmatch(r"(\d+)s", scrape).group(1))
    return {"$__rate_interval": f"{4 * seconds}s", "$__interval": scrape, "$__range": "1h"}


def panel_queries() -> list[PanelQuery]:
    variables = grafana_variables()
    found = []
    for board in dashboards().values():
        for panel in panels(board):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in variables.items():
                    expr = expr.replace(name, value)
                found.append(PanelQuery(board["title"], tuple(board.get("tags", [])), panel["title"], expr))
    return found
