"""How long a model swap stalls requests: one client posts single rows back to back while the alias flips
between two versions, and the longest answers are reported.

    python -m tests.benchmarks.swap_pause [--swaps 6] [--baseline REF]

The registry is a copy of MLFLOW_TRACKING_URI's SQLite file (the real one is not touched), with a second
version of MODEL_NAME@MODEL_ALIAS's model registered under a private alias. With --baseline the service
as it was at REF is measured the same way, after this one. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from tests.benchmarks.peers import baseline_checkout
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

SWAP_ALIAS = "swap-bench"


def private_registry(scratch: Path) -> tuple[str, str, list[str], dict]:
    """(tracking URI, model name, two version numbers, a valid row) in a copy of the configured registry."""
    from mlflow import MlflowClient

    from api.loading import load_registered
    from api.registry import resolve_alias
    from api.settings import Settings
    from tests.benchmarks.api import benchmark_rows

    settings = Settings(model_uri=None)
    source = (settings.mlflow_tracking_uri or os.environ["MLFLOW_TRACKING_URI"]).removeprefix("sqlite:///")
    shutil.copy2(source, scratch / "mlflow.db")
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, alias = settings.registered_model
    first = client.get_model_version_by_alias(name, alias)
    second = client.create_model_version(name, source=first.source, run_id=first.run_id, tags=first.tags)
    client.set_registered_model_alias(name, SWAP_ALIAS, first.version)
    served = load_registered(settings, resolve_alias(settings))
    row = next(row for row in benchmark_rows(served, 50) if None not in row.values())
    return uri, name, [str(first.version), str(second.version)], row


def measure(cwd: Path, extra_env: dict[str, str], uri: str, name: str, versions: list[str], row: dict,
            swaps: int, label: str, log_dir: Path) -> dict[str, float]:  # fmt: skip
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(name, SWAP_ALIAS, versions[0])
    port = free_port()
    env = subprocess_env(MLFLOW_TRACKING_URI=uri, MODEL_NAME=name, MODEL_ALIAS=SWAP_ALIAS,
                         RELOAD_INTERVAL_SECONDS="0.5", **extra_env)  # fmt: skip
    body = json.dumps(row).encode()
    latencies: list[tuple[float, float]] = []
    stop = threading.Event()

    def drive() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while not stop.is_set():
            started = time.perf_counter()
            connection.request("POST", "/predict", body, headers)
            answer = connection.getresponse()
            answer.read()
            latencies.append((started, time.perf_counter() - started))

    def served_version() -> str:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/model")
        return str(json.loads(connection.getresponse().read())["version"])

    with running(
        [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
        log_dir / f"swap-{label}.log",
        ready_url=f"http://127.0.0.1:{port}/ready",
        timeout=120,
        cwd=cwd,
        env=env,
    ):
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        time.sleep(3)
        quiet = [latency for _, latency in latencies]
        for swap in range(swaps):
            target = versions[(swap + 1) % 2]
            client.set_registered_model_alias(name, SWAP_ALIAS, target)
            deadline = time.monotonic() + 60
            while served_version() != target and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.5)
        stop.set()
        driver.join(timeout=30)
    during = sorted((latency for _, latency in latencies), reverse=True)
    return {
        "requests": len(latencies),
        "median_without_swaps_ms": statistics.median(quiet) * 1000,
        "max_without_swaps_ms": max(quiet) * 1000,
        "max_ms": during[0] * 1000,
        f"top_{swaps}_median_ms": statistics.median(during[:swaps]) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--baseline", metavar="REF", help="also measure the service as it was at a git ref")
    options = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    log_dir = REPO_ROOT / ".bench"
    log_dir.mkdir(exist_ok=True)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swap-pause-")))
        uri, name, versions, row = private_registry(scratch)
        peers: list[tuple[str, Path, dict[str, str]]] = [("this service", REPO_ROOT, {})]
        if options.baseline:
            checkout, extra_env = stack.enter_context(baseline_checkout(options.baseline))
            peers.append((f"baseline {options.baseline}", checkout, extra_env))
        for label, cwd, extra_env in peers:
            figures = measure(
                cwd, extra_env, uri, name, versions, row, options.swaps, label.split()[0], log_dir
            )
            print(
                f"swap-pause: {label}: " + ", ".join(f"{key} {value:.1f}" for key, value in figures.items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
