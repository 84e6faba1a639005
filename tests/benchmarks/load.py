"""Measuring one server: wrk with tests/benchmarks/post.lua for load, and histograms read from /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("post.lua")


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


def group_cpu_seconds(group: int) -> float:
    """User and system CPU time, so far, of the live processes of one process group (a server started in
    its own session, its workers included), from /proc; 0 where there is no /proc."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after the command name, which is in parentheses and may hold spaces: state, ppid,
            # pgrp, ... utime and stime are the 12th and 13th of them.
            fields = entry.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


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
