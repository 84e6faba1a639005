"""`make bench`: the prediction service against `mlflow models serve` and a bare FastAPI endpoint.

All three serve the registered model `MODEL_NAME@MODEL_ALIAS` from MLFLOW_TRACKING_URI, on loopback, each in
one process with one thread for numeric work. wrk (with tests/benchmarks/post.lua) drives each with the same
single-row POSTs over 32 connections. The bare endpoint validates the same payload with the same request
model and returns a constant: the ceiling FastAPI itself allows. The three run side by side and are measured
in interleaved rounds, medians reported, which keeps the machine's drift out of the ratios. Then 1,000-row
batches go to this service alone (4 connections: a few keep one process busy). Server-side
`model_inference_seconds` comes from the service's own /metrics.

    python -m tests.benchmarks.api [--rounds 5] [--duration 4] [--connections 32]

Figures are reported against the targets of the issue; they are not asserted (a benchmark is not a test).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.telemetry import INFERENCE_SECONDS as INFERENCE_METRIC
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

LUA_SCRIPT = Path(__file__).with_name("post.lua")
OUTPUT_DIR = REPO_ROOT / ".bench"
BATCH_ROWS = 1000
SINGLE_ROW_BODIES = 200
TARGETS = {"vs_mlflow": 10.0, "vs_bare": 0.70, "inference_p50_ms": 0.5, "batch_rows_per_s": 100_000}


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


# ---------------------------------------------------------------------------------------------- measuring
def wrk(url: str, bodies: Path, duration: float, connections: int, threads: int) -> dict[str, float]:
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{round(duration)}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies),
    ]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    line = next((item for item in result.stdout.splitlines() if item.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    failures = {
        key: raw[key] for key in ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts")
    }
    if any(failures.values()):
        raise RuntimeError(f"{url}: wrk saw failures {failures}")
    seconds = raw["duration_us"] / 1e6
    return {
        "requests_per_s": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests": raw["requests"],
    }


def post_json(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def histogram_buckets(metrics_url: str, name: str) -> dict[float, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            labels, value = line.rsplit(" ", 1)
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(value)
    return buckets


def histogram_quantile(quantile: float, before: dict[float, float], after: dict[float, float]) -> float:
    """As PromQL's histogram_quantile, over the observations made between two scrapes."""
    bounds = sorted(after)
    counts = [after[bound] - before.get(bound, 0.0) for bound in bounds]
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank, previous_bound, previous_count = quantile * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / max(
                count - previous_count, 1e-12
            )
        previous_bound, previous_count = bound, count
    return bounds[-2]


# ---------------------------------------------------------------------------------------------- servers
def bare_app(settings: Any) -> Any:
    """FastAPI at its leanest: the same request model as the service, a constant answer."""
    from fastapi import FastAPI

    from api.loading import load_registered
    from api.registry import resolve_alias

    served = load_registered(settings, resolve_alias(settings))
    record_model = served.requests.record
    constant = {
        "label": served.labels[0],
        "probability": 0.5,
        "model_name": served.registry.name,
        "model_version": served.registry.version,
    }
    app = FastAPI()

    async def predict(record: record_model) -> dict[str, Any]:  # type: ignore[valid-type]
        return constant

    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/predict", predict, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    return app


def serve_bare(port: int) -> None:
    import uvicorn

    from api.settings import Settings

    uvicorn.run(
        bare_app(Settings()),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


@dataclass
class Server:
    name: str
    args: list[str]
    ready_path: str
    predict_path: str
    bodies: Path
    first_body: Any
    base: str = ""
    rounds: list[dict[str, float]] = field(default_factory=list)


def start(stack: ExitStack, server: Server, env: dict[str, str]) -> None:
    port = free_port()
    server.base = f"http://127.0.0.1:{port}"
    command = [part.replace("{port}", str(port)) for part in server.args]
    log = OUTPUT_DIR / f"{server.name.split(' (')[0].replace(' ', '-')}.log"
    began = time.monotonic()
    stack.enter_context(running(command, log, env=env, cwd=REPO_ROOT))
    wait_until_ready(f"{server.base}{server.ready_path}", timeout=180)
    post_json(f"{server.base}{server.predict_path}", server.first_body)  # accepted before any timing
    print(
        f"bench: {server.name} is up after {time.monotonic() - began:.1f}s (log: {log.relative_to(REPO_ROOT)})"
    )


def wait_until_ready(url: str, timeout: float) -> None:
    """Like tests.support.processes.wait_for_http, but closes each non-2xx answer (/ready gives 503s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            error.close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(server: Server) -> dict[str, Any]:
    return {
        key: median([item[key] for item in server.rounds]) for key in ("requests_per_s", "p50_ms", "p99_ms")
    } | {"rounds_requests_per_s": [round(item["requests_per_s"]) for item in server.rounds]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the three servers")
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
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if options.serve_bare:
        serve_bare(options.serve_bare)
        return 0
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (make system-deps installs it)", file=sys.stderr)
        return 2

    from api.loading import load_registered
    from api.registry import resolve_alias
    from api.settings import Settings

    settings = Settings()
    target = f"models:/{settings.model_name}@{settings.model_alias}"
    try:
        registered = resolve_alias(settings)
    except Exception as error:
        print(
            f"bench: cannot resolve {target} in {settings.mlflow_tracking_uri}: {error}\n"
            "bench: train and promote a model first: `make run`, or `dvc repro && python -m stages.promote --first`",
            file=sys.stderr,
        )
        return 2
    served = load_registered(settings, registered)
    print(f"bench: {target} is version {registered.version} ({served.predictor.kind} predictor)")
    OUTPUT_DIR.mkdir(exist_ok=True)
    rows = benchmark_rows(served, max(BATCH_ROWS * 5, SINGLE_ROW_BODIES))
    # mlflow's signature marks every column required, so single rows are complete ones (for all three).
    complete = [row for row in rows if all(value is not None for value in row.values())][:SINGLE_ROW_BODIES]
    single = write_bodies(OUTPUT_DIR / "single.jsonl", complete)
    mlflow_single = write_bodies(
        OUTPUT_DIR / "mlflow-single.jsonl", [{"dataframe_records": [row]} for row in complete]
    )
    batches = write_bodies(
        OUTPUT_DIR / "batch.jsonl",
        [{"records": rows[i : i + BATCH_ROWS]} for i in range(0, len(rows), BATCH_ROWS)],
    )

    env = subprocess_env(OMP_NUM_THREADS="1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    if settings.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    python = sys.executable
    ours = Server(
        "this service",
        [python, "-m", "api", "--port", "{port}", "--log-level", "warning"],
        "/ready",
        "/predict",
        single,
        complete[0],
    )
    mlflow = Server(
        "mlflow models serve",
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
    bare = Server(
        "bare FastAPI (constant)",
        [python, "-m", "tests.benchmarks.api", "--serve-bare", "{port}"],
        "/health",
        "/predict",
        single,
        complete[0],
    )
    servers = [ours, mlflow, bare]

    def load(
        server: Server,
        seconds: float,
        bodies: Path | None = None,
        path: str | None = None,
        connections: int | None = None,
    ) -> dict[str, float]:
        return wrk(
            f"{server.base}{path or server.predict_path}",
            bodies or server.bodies,
            seconds,
            connections or options.connections,
            options.threads,
        )

    with ExitStack() as stack:
        for server in servers:
            start(stack, server, env)
        for server in servers:
            load(server, options.warmup)
        # The machine's speed drifts (other tenants, turbo); interleaving the servers round by round and
        # taking medians keeps that drift out of the ratios.
        before = histogram_buckets(f"{ours.base}/metrics", INFERENCE_METRIC)
        for round_index in range(options.rounds):
            order = servers[round_index % len(servers) :] + servers[: round_index % len(servers)]
            for server in order:
                server.rounds.append(load(server, options.duration))
        after = histogram_buckets(f"{ours.base}/metrics", INFERENCE_METRIC)
        inference_p50_ms = histogram_quantile(0.5, before, after) * 1000
        load(ours, options.warmup, batches, "/predict/batch", options.batch_connections)
        batch_rounds = [
            load(ours, options.duration, batches, "/predict/batch", options.batch_connections)
            for _ in range(3)
        ]
    results = {server.name: summarise(server) for server in servers}
    results[ours.name] |= {
        "inference_p50_ms": inference_p50_ms,
        "batch_rows_per_s": median([item["requests_per_s"] for item in batch_rounds]) * BATCH_ROWS,
        "batch_p50_ms": median([item["p50_ms"] for item in batch_rounds]),
        "batch_p99_ms": median([item["p99_ms"] for item in batch_rounds]),
    }
    report(results, options, registered.version, served.predictor.kind)
    return 0


def report(results: dict[str, dict[str, Any]], options: argparse.Namespace, version: Any, kind: str) -> None:
    ours, mlflow, bare = (
        results[name] for name in ("this service", "mlflow models serve", "bare FastAPI (constant)")
    )
    vs_mlflow = ours["requests_per_s"] / mlflow["requests_per_s"]
    vs_bare = ours["requests_per_s"] / bare["requests_per_s"]

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    print(
        f"\nsingle-row POST, wrk {options.threads} threads x {options.connections} connections, medians of "
        f"{options.rounds} interleaved {options.duration:g} s rounds, loopback, {os.cpu_count()} cores "
        f"(model v{version}, {kind})"
    )
    print(f"{'server':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, result in results.items():
        print(
            f"{name:<28}{result['requests_per_s']:>10,.0f}{result['p50_ms']:>10.2f}{result['p99_ms']:>10.2f}"
        )
    print()
    print(
        f"{'this service / mlflow models serve':<44}{vs_mlflow:>10.1f}x   target >= {TARGETS['vs_mlflow']:g}x   "
        f"{verdict(vs_mlflow >= TARGETS['vs_mlflow'])}"
    )
    print(
        f"{'this service / bare FastAPI':<44}{vs_bare:>10.0%}    target >= {TARGETS['vs_bare']:.0%}   "
        f"{verdict(vs_bare >= TARGETS['vs_bare'])}"
    )
    print(
        f"{'model_inference_seconds p50 (server side)':<44}{ours['inference_p50_ms']:>8.3f} ms   "
        f"target <= {TARGETS['inference_p50_ms']} ms   {verdict(ours['inference_p50_ms'] <= TARGETS['inference_p50_ms'])}"
    )
    print(
        f"{f'batches of {BATCH_ROWS:,} rows':<44}{ours['batch_rows_per_s']:>10,.0f} rows/s   "
        f"target >= {TARGETS['batch_rows_per_s']:,}   {verdict(ours['batch_rows_per_s'] >= TARGETS['batch_rows_per_s'])}"
        f"   (p50 {ours['batch_p50_ms']:.1f} ms, p99 {ours['batch_p99_ms']:.1f} ms per request)"
    )
    summary = {
        "results": results,
        "ratios": {"vs_mlflow": vs_mlflow, "vs_bare": vs_bare},
        "targets": TARGETS,
        "model_version": str(version),
        "predictor": kind,
    }
    (OUTPUT_DIR / "api.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nbench: figures saved to {(OUTPUT_DIR / 'api.json').relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
