"""After a deploy: is the service at DEPLOY_URL ready, and does it serve the model it should?

    python -m stages.ci.deploy_check --url https://api.example.com                 # expects registry's production
    python -m stages.ci.deploy_check --url http://127.0.0.1:8000 --expect-version 7

It polls `/ready` until it answers 200, then `/model` until it reports the expected name and version
(the service picks up a moved alias on its next reload, so the first answers may still name the old one).
It exits 1 when the deadline passes first; `make deploy` then rolls back. When the service requires API
keys, DEPLOY_API_KEY (a secret of the `production` environment) is sent as `Authorization: Bearer`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.errors import run
from stages.registry import open_registry


@dataclass(frozen=True)
class Expected:
    name: str
    version: str


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    model: dict[str, Any] | None = None


def request_headers() -> dict[str, str]:
    """What every check sends: JSON wanted, and DEPLOY_API_KEY when the environment has one."""
    headers = {"Accept": "application/json"}
    key = os.environ.get("DEPLOY_API_KEY", "").strip()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def get(url: str, timeout: float) -> tuple[int, Any]:
    """(status, parsed JSON body or None); status 0 when nothing answered."""
    request = urllib.request.Request(url, headers=request_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(getattr(error, "reason", error))
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def check_once(base_url: str, expected: Expected, request_timeout: float = 5.0) -> Outcome:
    status, body = get(f"{base_url}/ready", request_timeout)
    if status != 200:
        return Outcome(False, f"/ready answered {status or 'nothing'}: {body}")
    status, model = get(f"{base_url}/model", request_timeout)
    if status != 200 or not isinstance(model, dict):
        return Outcome(False, f"/model answered {status or 'nothing'}: {model}")
    # MLflow reports versions as int over SQLite and str over REST; compare their text.
    served = Expected(name=str(model.get("name")), version=str(model.get("version")))
    if served != expected:
        return Outcome(
            False,
            f"serving {served.name} v{served.version}, expected {expected.name} v{expected.version}",
            model,
        )
    return Outcome(True, f"ready and serving {served.name} v{served.version}", model)


def verify(
    base_url: str,
    expected: Expected,
    timeout: float,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Poll until the deployment is ready with the expected model, or the deadline passes."""
    base_url = base_url.rstrip("/")
    deadline = clock() + timeout
    while True:
        outcome = check_once(base_url, expected)
        if outcome.ok or clock() + interval > deadline:
            return outcome
        print(f"deploy-check: waiting: {outcome.message}", flush=True)
        sleep(interval)


def service_arguments(description: str | None) -> argparse.ArgumentParser:
    """The options every command that verifies a deployment takes: where it is and how long to wait."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=os.environ.get("DEPLOY_URL"), help="the service (default: $DEPLOY_URL)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait in all (default: 300)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default: 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = service_arguments(__doc__)
    parser.add_argument(
        "--expect-version", help="default: the version behind the registry's production alias"
    )
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url or set DEPLOY_URL")

    registry = open_registry()
    if args.expect_version:
        expected = Expected(name=registry.model_name, version=str(args.expect_version))
    else:
        production = registry.production()
        if production is None:
            print(f"deploy-check: {registry.model_name} has no production version", flush=True)
            return 1
        expected = Expected(name=registry.model_name, version=str(production.version))
    print(f"deploy-check: expecting {expected.name} v{expected.version} at {args.url}", flush=True)
    outcome = verify(args.url, expected, timeout=args.timeout, interval=args.interval)
    print(f"deploy-check: {'ok' if outcome.ok else 'FAILED'}: {outcome.message}", flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    run(main, "deploy-check")
