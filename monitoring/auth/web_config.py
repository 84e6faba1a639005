"""Prometheus' and Alertmanager's web config files (`--web.config.file`), written from the environment at
start, so that both answer only with basic auth and no password is ever stored in the repository.

    python monitoring/auth/web_config.py OUTPUT_DIR

Reads PROMETHEUS_PASSWORD and ALERTMANAGER_PASSWORD (.env) and writes, into OUTPUT_DIR (the user names
are the services' names, as prometheus.yml and Grafana's datasource spell them):
- prometheus-web.yml, alertmanager-web.yml: `basic_auth_users` with one bcrypt hash each (the form the
  Prometheus exporter-toolkit reads);
- prometheus.password, alertmanager.password: the plain passwords, for the `password_file` of
  prometheus.yml's scrape and alerting configs (Prometheus reads a file, never its own config, for them);
- from METRICS_API_KEY, the api's /metrics key: api-metrics.key, the key itself, for the `credentials_file`
  of prometheus.yml's api scrape, and metrics-api-keys.txt, its SHA-256, the api's METRICS_API_KEYS_FILE
  (the form api/access.py reads), so that only Prometheus may read the api's metrics.

Why basic auth at all: Alertmanager answers `Access-Control-Allow-Origin: *`, and a cross-origin POST
from any web page a user opened created a silence of every alert; Prometheus' API is as open. Behind
basic auth, a request without credentials gets 401. Compose runs this in a one-shot service before
either starts; the native end-to-end test runs it too.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import bcrypt

# bcrypt's cost: 2^10 rounds, about 50 ms per check on these machines. The exporter-toolkit caches a
# successful check, so a scrape every 10 s does not pay it each time.
ROUNDS = 10
SERVICES = ("prometheus", "alertmanager")
PASSWORD = re.compile(r"[A-Za-z0-9._~-]{12,}")
METRICS_KEY_VARIABLE = "METRICS_API_KEY"


class WebConfigError(ValueError):
    """A credential is missing or unusable; the message names the variable."""


def secret(env: Mapping[str, str], variable: str) -> str:
    """Only URL-safe characters: the compose healthchecks put the passwords in a URL."""
    value = env.get(variable, "")
    if not PASSWORD.fullmatch(value):
        raise WebConfigError(
            f"set {variable} in .env: at least 12 of A-Z a-z 0-9 . _ ~ - (e.g. `openssl rand -hex 24`)"
        )
    return value


def credentials(env: Mapping[str, str], service: str) -> tuple[str, str]:
    """(user, password)."""
    return service, secret(env, f"{service.upper()}_PASSWORD")


def metrics_key_files(env: Mapping[str, str]) -> dict[str, str]:
    """The api's /metrics key for Prometheus, and its hash for the api: one line each."""
    key = secret(env, METRICS_KEY_VARIABLE)
    return {
        "api-metrics.key": key,
        "metrics-api-keys.txt": "# Written by monitoring/auth/web_config.py at start; do not edit.\n"
        + hashlib.sha256(key.encode()).hexdigest()
        + "\n",
    }


def web_config(user: str, password: str, rounds: int = ROUNDS) -> str:
    """One user's web config. The hash is quoted: YAML would otherwise read a `$` or a leading `*` in it."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
    return f'# Written by monitoring/auth/web_config.py at start; do not edit.\nbasic_auth_users:\n  "{user}": "{hashed}"\n'


def write(env: Mapping[str, str], output: Path, rounds: int = ROUNDS) -> list[Path]:
    """Every file, readable by the services' own users (they run as other uids), writable by nobody."""
    output.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for service in SERVICES:
        user, password = credentials(env, service)
        files[f"{service}-web.yml"] = web_config(user, password, rounds)
        files[f"{service}.password"] = password
    files |= metrics_key_files(env)
    written = []
    for name, content in files.items():
        path = output / name
        path.unlink(missing_ok=True)
        path.write_text(content)
        path.chmod(0o444)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        written = write(os.environ, Path(argv[0]))
    except WebConfigError as error:
        print(f"web_config: {error}", file=sys.stderr)
        return 2
    print(f"web_config: wrote {', '.join(path.name for path in written)} into {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
