"""`make soak`: the service under a steady load for a bounded time, its memory sampled; fails on any
error or on RSS growth of more than 10% over the warmed-up baseline.

    python -m tests.benchmarks.soak [--seconds 600] [--warmup 30]

It serves MODEL_NAME@MODEL_ALIAS from MLFLOW_TRACKING_URI (as `make bench` does), finds the peak rate
with an unpaced wrk run first, then holds about 80% of it: plain wrk holds connections, not a rate, so
tests/benchmarks/soak.lua gives each wrk thread a schedule of one request every threads / rate seconds,
kept through wrk's `delay()` hook, whatever the answers' latency. The service's RSS is read from /proc every 10 s after the warm-up. A
benchmark, not a test: `make test` does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.benchmarks.load import wrk
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

PACED_SCRIPT = Path(__file__).with_name("soak.lua")
SHARE_OF_PEAK = 0.8
MAX_RSS_GROWTH = 0.10
SAMPLE_SECONDS = 10.0
WRK_THREADS = 2


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def paced_wrk(url: str, bodies: Path, seconds: float, connections: int, rate: float) -> subprocess.Popen:
    interval_ms = WRK_THREADS / rate * 1000  # each thread's share of the rate
    args = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{round(seconds)}s", "--latency", "--timeout",
            "10s", "-s", str(PACED_SCRIPT), url, "--", str(bodies), f"{interval_ms:.4f}"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load before the RSS baseline")
    parser.add_argument("--connections", type=int, default=32)
    options = parser.parse_args()
    if options.seconds <= options.warmup + 2 * SAMPLE_SECONDS:
        parser.error(f"--seconds must leave at least two samples after the {options.warmup:g} s warm-up")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from api.loading import load_registered
    from api.registry import resolve_alias
    from api.settings import Settings
    from tests.benchmarks.api import OUTPUT_DIR, benchmark_rows, write_bodies

    settings = Settings(model_uri=None)
    served = load_registered(settings, resolve_alias(settings))
    OUTPUT_DIR.mkdir(exist_ok=True)
    rows = [row for row in benchmark_rows(served, 400) if None not in row.values()][:200]
    bodies = write_bodies(OUTPUT_DIR / "soak.jsonl", rows)
    port = free_port()
    url = f"http://127.0.0.1:{port}/predict"
    log = OUTPUT_DIR / "soak-service.log"
    with running(
        [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
        log,
        ready_url=f"http://127.0.0.1:{port}/ready",
        timeout=180,
        cwd=REPO_ROOT,
        env=subprocess_env(),
    ) as service:
        peak = wrk(url, bodies, 10, options.connections, WRK_THREADS)["requests_per_s"]
        target = SHARE_OF_PEAK * peak
        print(f"soak: peak {peak:,.0f} req/s; holding {target:,.0f} req/s for {options.seconds:g} s "
              f"({options.connections} connections)", flush=True)  # fmt: skip
        load = paced_wrk(url, bodies, options.seconds, options.connections, target)
        began = time.monotonic()
        samples: list[tuple[float, int]] = []
        next_sample = began + options.warmup
        while load.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - began, rss_bytes(service.pid)))
                print(f"soak: {now - began:5.0f} s  RSS {samples[-1][1] / 2**20:7.1f} MiB", flush=True)
                next_sample += SAMPLE_SECONDS
            time.sleep(0.2)
        stdout, stderr = load.communicate()
    line = next((item for item in stdout.splitlines() if item.startswith("WRK_RESULT ")), None)
    if line is None:
        print(f"soak: wrk printed no result:\n{stdout}\n{stderr}", file=sys.stderr)
        return 1
    result = json.loads(line.removeprefix("WRK_RESULT "))
    errors = {
        key: result[key] for key in ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts")
    }
    rate = result["requests"] / (result["duration_us"] / 1e6)
    baseline = samples[0][1] if samples else 0
    growth = max(rss for _, rss in samples) / baseline - 1 if baseline else float("nan")
    print(f"soak: {result['requests']:,} requests, {rate:,.0f} req/s held, {rate / peak:.0%} of the peak (p50 {result['p50_us'] / 1000:.2f} ms, "
          f"p99 {result['p99_us'] / 1000:.2f} ms); errors {errors}")  # fmt: skip
    print(f"soak: RSS {baseline / 2**20:.1f} MiB after the warm-up, at most {growth:+.1%} over "
          f"{len(samples)} samples (limit +{MAX_RSS_GROWTH:.0%})")  # fmt: skip
    failed = any(errors.values()) or len(samples) < 2 or not growth <= MAX_RSS_GROWTH
    print(f"soak: {'FAILED' if failed else 'passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
