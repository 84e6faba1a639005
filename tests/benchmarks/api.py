"""`make bench`: the prediction service against a bare FastAPI endpoint, a raw ASGI endpoint (the
machine's ceiling), `mlflow models serve` and, with --baseline REF, itself as it was at a git ref.

Every server serves the registered model `MODEL_NAME@MODEL_ALIAS` (both from the environment) from
MLFLOW_TRACKING_URI, on loopback, each in one process with one thread for numeric work. wrk (with
tests/benchmarks/post.lua) drives each with the same single-row POSTs over 32 connections. The bare
endpoint validates the same payload with the same request model and returns a constant: the ceiling
FastAPI itself allows. The raw ASGI endpoint, under the uvicorn this service runs on (its options, its
protocol), only reads the body and decodes it with the model's msgspec decoder: the ceiling of any Python
service here, of which this service's share is reported. The servers run side by side and are measured in interleaved rounds, medians
reported, which keeps the machine's drift out of the ratios. This service runs twice: as `make run` serves
it (drift monitoring on, every record to the inference log under .bench/inference) and with both off, so
that the monitoring's cost is measured against itself in the same rounds, and once more with WORKERS=2
(monitoring off as well: "monitoring off" is its one-worker twin). wrk runs pinned to one core
(--wrk-cpu, the affinity taskset sets), the servers on all of them: on a 2-core machine a second worker
then has one core to itself at most, and still shares it with the first. Then 1,000-row batches go to this service
(and to the baseline, interleaved with it) over 4 connections: a few keep one process busy. Server-side
`model_inference_seconds` comes from the service's own /metrics.

    python -m tests.benchmarks.api [--rounds 5] [--duration 4] [--connections 32]
    python -m tests.benchmarks.api --baseline 673acc3 --no-mlflow     # this branch against a commit

The baseline is checked out in a temporary git worktree and runs `python -m api` there, on this venv.
The benchmark reports its figures against its targets and asserts none of them (a benchmark is not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.telemetry import INFERENCE_SECONDS as INFERENCE_METRIC
from tests.benchmarks.load import (
    group_cpu_seconds,
    histogram_buckets,
    histogram_quantile,
    post_json,
    wait_until_ready,
    wrk,
)
from tests.benchmarks.peers import baseline_checkout, serve_bare, serve_ceiling
from tests.benchmarks.report import (
    BARE,
    BASELINE,
    BATCH_ROWS,
    CEILING,
    MLFLOW,
    OURS,
    UNMONITORED,
    UNMONITORED_SUFFIX,
    report,
)
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

OUTPUT_DIR = REPO_ROOT / ".bench"

SINGLE_ROW_BODIES = 200
TWO_WORKERS = "this service, 2 workers"


# ---------------------------------------------------------------------------------------------- payloads
def benchmark_rows(served: Any, count: int) -> list[dict[str, Any]]:
    """Real held-out rows when the pipeline has run here, else rows drawn from the feature metadata."""
    from api.fast import synthetic_rows

    test_split = REPO_ROOT / "data" / "prepared" / "test.parquet"
    columns = served.requests.columns
    if test_split.is_file():
        import pandas as pd

        frame = pd.read_parquet(test_split)[list(columns.order)]
        rows = []
        for record in frame.astype(object).where(frame.notna(), None).to_dict(orient="records"):
            rows.append(
                {
                    name: float(value) if name in columns.numeric and value is not None else value
                    for name, value in record.items()
                }
            )
        source = f"{test_split.relative_to(REPO_ROOT)}"
    else:
        rows = synthetic_rows(served.feature_metadata, columns, count)
        source = "rows drawn from the model's feature metadata"
    rows = (rows * (count // max(len(rows), 1) + 1))[:count]
    print(f"bench: payload rows from {source}")
    return rows


def write_bodies(path: Path, bodies: list[Any]) -> Path:
    path.write_text("".join(json.dumps(body, separators=(",", ":")) + "\n" for body in bodies))
    return path


# ---------------------------------------------------------------------------------------------- servers
@dataclass
class Server:
    name: str
    args: list[str]
    ready_path: str
    predict_path: str
    bodies: Path
    first_body: Any
    cwd: Path = REPO_ROOT
    env: dict[str, str] = field(default_factory=dict)  # on top of the shared environment
    base: str = ""
    group: int = 0  # its process group: the server and its workers
    rounds: list[dict[str, float]] = field(default_factory=list)
    batch_rounds: list[dict[str, float]] = field(default_factory=list)


def start(stack: ExitStack, server: Server, env: dict[str, str]) -> None:
    port = free_port()
    server.base = f"http://127.0.0.1:{port}"
    command = [part.replace("{port}", str(port)) for part in server.args]
    log = OUTPUT_DIR / f"{re.sub(r'[^A-Za-z0-9.]+', '-', server.name).strip('-')}.log"
    began = time.monotonic()
    server.group = stack.enter_context(running(command, log, env=env | server.env, cwd=server.cwd)).pid
    wait_until_ready(f"{server.base}{server.ready_path}", timeout=180)
    post_json(f"{server.base}{server.predict_path}", server.first_body)  # accepted before any timing
    print(
        f"bench: {server.name} is up after {time.monotonic() - began:.1f}s (log: {log.relative_to(REPO_ROOT)})"
    )


def wait_for_workers(base: str, count: int, timeout: float = 180) -> None:
    """Until `count` workers each serve a model: /ready answers as soon as one does. The process series
    carry a pid per live worker, and model_loaded (livemin) is 1 only when every live one has its model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            lines = response.read().decode().splitlines()
        pids = {
            line.split('pid="', 1)[1].split('"', 1)[0]
            for line in lines
            if line.startswith("process_start_time_seconds{")
        }
        if len(pids) == count and "model_loaded 1.0" in lines:
            return
        time.sleep(0.25)
    raise TimeoutError(f"{base}: {count} workers did not all serve a model within {timeout:g}s")


def pin_load_generator(cpu: int) -> str:
    """This process, and so the wrk it starts from now on, on `cpu` alone (the servers, started before,
    keep every core): what `taskset -c CPU wrk ...` would do, for every wrk run at once."""
    if cpu < 0 or not hasattr(os, "sched_setaffinity"):
        return "wrk not pinned"
    os.sched_setaffinity(0, {cpu})
    return f"wrk pinned to cpu {cpu}"


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(server: Server) -> dict[str, Any]:
    summary: dict[str, Any] = {
        key: median([item[key] for item in server.rounds])
        for key in ("requests_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")
    } | {"rounds_requests_per_s": [round(item["requests_per_s"]) for item in server.rounds]}
    if server.batch_rounds:
        summary |= {
            "batch_rows_per_s": median([item["requests_per_s"] for item in server.batch_rounds]) * BATCH_ROWS,
            "batch_p50_ms": median([item["p50_ms"] for item in server.batch_rounds]),
            "batch_p99_ms": median([item["p99_ms"] for item in server.batch_rounds]),
            "rounds_batch_rows_per_s": [
                round(item["requests_per_s"] * BATCH_ROWS) for item in server.batch_rounds
            ],
        }
    return summary


def interleaved(servers: list[Server], rounds: int, measure: Any) -> None:
    """`measure(server)` for every server, round after round, each round starting one server later: the
    machine's speed drifts (other tenants, turbo), and this keeps that drift out of the ratios."""
    for round_index in range(rounds):
        shift = round_index % len(servers)
        for server in servers[shift:] + servers[:shift]:
            measure(server)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the servers")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per server per round")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the first round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--batch-connections",
        type=int,
        default=4,
        help="connections for the 1,000-row batches: a few keep one process busy",
    )
    parser.add_argument("--batch-rounds", type=int, default=3, help="rounds of 1,000-row batches")
    parser.add_argument("--baseline", metavar="REF", help="also measure this service as it was at a git ref")
    parser.add_argument(
        "--baseline-monitoring",
        action="store_true",
        help="run the baseline as this service runs: monitored (drift and a log of its own) and with both "
        "off, so that the two monitoring costs are measured in the same rounds",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="leave out the slow `mlflow models serve`")
    parser.add_argument(
        "--wrk-cpu", type=int, default=0, help="the one core wrk runs on (-1: any), the servers on every core"
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-ceiling", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if options.serve_bare:
        serve_bare(options.serve_bare)
        return 0
    if options.serve_ceiling:
        serve_ceiling(options.serve_ceiling)
        return 0
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (make system-deps installs it)", file=sys.stderr)
        return 2

    from pydantic import ValidationError

    from api.loading import load_registered
    from api.registry import resolve_alias
    from api.settings import Settings

    try:
        settings = Settings(model_uri=None)
    except ValidationError as error:
        print(f"bench: {error.errors()[0]['msg']} (`make bench` passes params.yaml's)", file=sys.stderr)
        return 2
    target = settings.target
    try:
        registered = resolve_alias(settings)
    except Exception as error:
        print(
            f"bench: cannot resolve {target} in {settings.mlflow_tracking_uri}: {error}\n"
            "bench: train and promote a model first: `make run`, or `dvc repro && python -m stages.registry promote --first`",
            file=sys.stderr,
        )
        return 2
    served = load_registered(settings, registered)
    print(f"bench: {target} is version {registered.version} ({served.predictor.kind} predictor)")
    OUTPUT_DIR.mkdir(exist_ok=True)
    rows = benchmark_rows(served, max(BATCH_ROWS * 5, SINGLE_ROW_BODIES))
    # mlflow's signature marks every column required, so single rows are complete ones (for all of them).
    complete = [row for row in rows if all(value is not None for value in row.values())][:SINGLE_ROW_BODIES]
    single = write_bodies(OUTPUT_DIR / "single.jsonl", complete)
    mlflow_single = write_bodies(
        OUTPUT_DIR / "mlflow-single.jsonl", [{"dataframe_records": [row]} for row in complete]
    )
    batches = write_bodies(
        OUTPUT_DIR / "batch.jsonl",
        [{"records": rows[i : i + BATCH_ROWS]} for i in range(0, len(rows), BATCH_ROWS)],
    )

    # Both services get the model's name and alias from the environment (a baseline from before they
    # became required still reads them), and no other setting.
    name, alias = settings.registered_model
    env = subprocess_env(
        OMP_NUM_THREADS="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", MODEL_NAME=name, MODEL_ALIAS=alias
    )
    for variable in ("MODEL_URI", "INFERENCE_LOG_DIR", "DRIFT_MONITORING"):  # each server sets its own
        env.pop(variable, None)
    if settings.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    python = sys.executable
    service_args = [python, "-m", "api", "--port", "{port}", "--log-level", "warning"]
    # This service as `make run` serves it: drift counted and every record written to the inference log.
    inference_log = OUTPUT_DIR / "inference"
    shutil.rmtree(inference_log, ignore_errors=True)
    monitored = {"DRIFT_MONITORING": "true", "INFERENCE_LOG_DIR": str(inference_log)}
    ours = Server(OURS, service_args, "/ready", "/predict", single, complete[0], env=monitored)
    # The same service with both off (request ids stay: they are part of the answer): the monitoring's cost.
    unmonitored = Server(
        UNMONITORED,
        service_args,
        "/ready",
        "/predict",
        single,
        complete[0],
        env={"DRIFT_MONITORING": "false"},
    )
    # Two workers behind one port (api/__main__.py), monitoring off like `unmonitored`, its one-worker twin.
    two_workers = Server(
        TWO_WORKERS,
        service_args,
        "/ready",
        "/predict",
        single,
        complete[0],
        env={"DRIFT_MONITORING": "false", "WORKERS": "2"},
    )
    mlflow = Server(
        MLFLOW,
        [
            "mlflow",
            "models",
            "serve",
            "-m",
            target,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            "{port}",
            "-w",
            "1",
        ],
        "/ping",
        "/invocations",
        mlflow_single,
        {"dataframe_records": [complete[0]]},
    )
    # The two peers this module serves itself, by a hidden option: bare FastAPI and the raw ASGI ceiling.
    bare, ceiling = (
        Server(
            name,
            [python, "-m", "tests.benchmarks.api", option, "{port}"],
            "/health",
            "/predict",
            single,
            complete[0],
        )
        for name, option in ((BARE, "--serve-bare"), (CEILING, "--serve-ceiling"))
    )

    def load(server: Server, seconds: float, batch: bool = False) -> dict[str, float]:
        # The server's CPU per request as well: on a machine shared with other work its throughput follows
        # what the neighbours leave it, its CPU time per request much less so.
        cpu_before = group_cpu_seconds(server.group)
        result = wrk(
            f"{server.base}{'/predict/batch' if batch else server.predict_path}",
            batches if batch else server.bodies,
            seconds,
            options.batch_connections if batch else options.connections,
            options.threads,
        )
        cpu = group_cpu_seconds(server.group) - cpu_before
        return result | {"cpu_us_per_request": cpu / max(result["requests"], 1) * 1e6}

    with ExitStack() as stack:
        servers = [ours, unmonitored, two_workers]
        if options.baseline:
            checkout, extra_env = stack.enter_context(baseline_checkout(options.baseline))
            name = f"{BASELINE} ({options.baseline})"
            variants = {name: extra_env}  # as the shared environment leaves it: drift on, no log
            if options.baseline_monitoring:
                baseline_log = OUTPUT_DIR / "inference-baseline"
                shutil.rmtree(baseline_log, ignore_errors=True)
                variants = {
                    name: extra_env | monitored | {"INFERENCE_LOG_DIR": str(baseline_log)},
                    name + UNMONITORED_SUFFIX: extra_env | {"DRIFT_MONITORING": "false"},
                }
            for variant, variant_env in variants.items():
                servers.append(
                    Server(
                        variant,
                        service_args,
                        "/ready",
                        "/predict",
                        single,
                        complete[0],
                        checkout,
                        variant_env,
                    )
                )
        if not options.no_mlflow:
            servers.append(mlflow)
        servers += [bare, ceiling]
        for server in servers:
            start(stack, server, env)
        wait_for_workers(two_workers.base, 2)
        print(f"bench: {pin_load_generator(options.wrk_cpu)}, the servers on any of {os.cpu_count()} cores")
        for server in servers:
            load(server, options.warmup)
        before = histogram_buckets(f"{ours.base}/metrics", INFERENCE_METRIC)
        interleaved(
            servers, options.rounds, lambda server: server.rounds.append(load(server, options.duration))
        )
        after = histogram_buckets(f"{ours.base}/metrics", INFERENCE_METRIC)
        inference_p50_ms = histogram_quantile(0.5, before, after) * 1000
        batched = [server for server in servers if server.args is service_args]
        for server in batched:
            load(server, options.warmup, batch=True)
        interleaved(
            batched,
            options.batch_rounds,
            lambda server: server.batch_rounds.append(load(server, options.duration, True)),
        )
    results = {server.name: summarise(server) for server in servers}
    results[OURS]["inference_p50_ms"] = inference_p50_ms
    report(results, options, registered.version, served.predictor.kind, OUTPUT_DIR)
    one, two = results[UNMONITORED], results[TWO_WORKERS]
    print(
        f"bench: 2 workers / 1 worker (monitoring off): single rows "
        f"{two['requests_per_s'] / one['requests_per_s']:.2f}x, {BATCH_ROWS:,}-row batches "
        f"{two['batch_rows_per_s'] / one['batch_rows_per_s']:.2f}x, on {os.cpu_count()} cores "
        f"with wrk on one of them: where wrk shares the cores, a second worker cannot show much."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
