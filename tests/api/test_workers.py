"""Several workers behind one port (WORKERS, api/__main__.py) and their metrics in prometheus_client's
multiprocess mode (api/telemetry.py).

The real-process test starts `python -m api` with WORKERS=2 on a copy of the test registry and sends it
2,000 requests over many connections. It knows which worker answered from `http_worker_requests`, a
series per live worker that prometheus_client labels with the worker's pid, and checks those pids against
the parent's child processes (/proc) and the per-worker `process_*` series."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import uvicorn
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from api.__main__ import uvicorn_options
from api.settings import Settings
from api.telemetry import MULTIPROC_DIR, PROBABILITY_BUCKETS, multiprocess_directory
from tests.api.support import Samples, by_pid, scrape, send, total, wait_for_workers, wait_until
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

SINGLE, BATCHES, BATCH_ROWS = 1800, 200, 5  # 2,000 requests, 1,000 batch rows


# ------------------------------------------------------------------------------------- start-up, no model
@pytest.mark.parametrize("workers", [1, 2])
def test_workers_wins_over_web_concurrency_and_the_config_pickles(workers, monkeypatch, tmp_path):
    """uvicorn reads WEB_CONCURRENCY only when given no number; `python -m api` always gives WORKERS. The
    config pickles, as uvicorn's spawned workers need: the protocol is named, not a class made at run
    time."""
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    settings = Settings(model_uri=str(tmp_path / "model"), workers=workers)
    config = uvicorn.Config(**uvicorn_options(settings, None, None, "info"))
    assert config.workers == workers
    assert config.http == "api.server:GuardedHttpToolsProtocol"
    assert pickle.loads(pickle.dumps(config)).http == config.http


def test_the_multiprocess_directory_is_emptied_or_made_for_several_workers(monkeypatch, tmp_path):
    monkeypatch.delenv(MULTIPROC_DIR, raising=False)
    with multiprocess_directory(1) as path:
        assert path is None and MULTIPROC_DIR not in os.environ  # one worker: single-process mode
    with multiprocess_directory(2) as path:
        assert path is not None and path.is_dir() and os.environ[MULTIPROC_DIR] == str(path)
    assert not path.exists()  # a directory it made is its own to remove, and its variable
    assert MULTIPROC_DIR not in os.environ  # else every later Gauge.clear() here would warn (an error)

    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"an earlier run's")
    (given / "README").write_text("not prometheus_client's")
    monkeypatch.setenv(MULTIPROC_DIR, str(given))
    with multiprocess_directory(1) as path:  # set: multiprocess mode even for one worker
        assert path == given and [entry.name for entry in given.iterdir()] == ["README"]
    assert given.is_dir()


MERGED_HISTOGRAMS = """
import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from api.telemetry import PROBABILITY_BUCKETS, BatchHistogram, in_multiprocess_mode

assert in_multiprocess_mode()
values = np.random.default_rng(0).random(1000)
batched = BatchHistogram("batched", "doc", PROBABILITY_BUCKETS, CollectorRegistry())
batched.observe_many(values[:600])
batched.observe(float(values[600]))
batched.observe_many(values[601:])
stock = Histogram("stock", "doc", buckets=PROBABILITY_BUCKETS, registry=CollectorRegistry())
for value in values.tolist():
    stock.observe(value)
merged = CollectorRegistry()
MultiProcessCollector(merged)
print(generate_latest(merged).decode())
"""


def test_batch_histogram_files_merge_as_a_stock_histogram_s(tmp_path):
    """In multiprocess mode `prediction_probability` goes to the files under a stock Histogram's keys:
    merged, its buckets, count and sum are the stock one's, to the last digit."""
    env = subprocess_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    text = subprocess.run(
        [sys.executable, "-c", MERGED_HISTOGRAMS],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    batched = sorted(line.removeprefix("batched") for line in lines if line.startswith("batched"))
    stock = sorted(line.removeprefix("stock") for line in lines if line.startswith("stock"))
    assert len(batched) == len(PROBABILITY_BUCKETS) + 3  # a bucket per bound and +Inf, _count, _sum
    assert batched == stock


# ------------------------------------------------------------------------------------- the real processes
def served_versions(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["version"]: value for (name, labels), value in samples.items() if name == "model_info"
    }


def children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def settled(base: str, before: Samples, sent: int) -> Samples:
    """/metrics once every request sent is counted: a request is counted just after its answer leaves."""
    samples: Samples = {}

    def counted() -> bool:
        nonlocal samples
        samples = scrape(base)
        return total(samples, "http_requests_total") - total(before, "http_requests_total") >= sent

    wait_until(counted, 10, "every request counted")
    return samples


def stale_files(directory: Path) -> None:
    """What an earlier run would leave: 1,000 /predict requests counted, and a version served."""
    directory.mkdir()
    counters = MmapedDict(str(directory / "counter_999999.db"))
    key = mmap_key(
        "http_requests",
        "http_requests_total",
        ["handler", "method", "status"],
        ["/predict", "POST", "2xx"],
        "",
    )
    counters.write_value(key, 1000.0, 0.0)
    counters.close()


@pytest.mark.slow
def test_two_workers_serve_one_port_add_up_and_follow_the_alias(own_registry, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "metrics"
    stale_files(metrics_dir)
    env = subprocess_env(
        MLFLOW_TRACKING_URI=own_registry.tracking_uri,
        MODEL_NAME=own_registry.model_name,
        MODEL_ALIAS="production",
        WORKERS="2",
        RELOAD_INTERVAL_SECONDS="0.5",
        DRIFT_INTERVAL_SECONDS="0.2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    for variable in ("MODEL_URI", "WEB_CONCURRENCY"):
        env.pop(variable, None)
    command = [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)]
    rows = own_registry.rows(50)
    requests = [("/predict", rows[number % len(rows)]) for number in range(SINGLE)] + [
        ("/predict/batch", {"records": rows[number % 10 : number % 10 + BATCH_ROWS]})
        for number in range(BATCHES)
    ]
    with running(
        command, tmp_path / "api.log", ready_url=f"{base}/ready", timeout=120, env=env, cwd=REPO_ROOT
    ) as parent:
        samples = wait_for_workers(base, 2)
        workers = set(by_pid(samples, "process_start_time_seconds"))
        assert workers <= children(parent.pid), "the pids on /metrics are the supervisor's worker processes"
        assert set(by_pid(samples, "process_resident_memory_bytes")) == workers
        assert total(samples, "model_reloads_total", result="success") == 2  # each worker loaded its own
        assert served_versions(samples) == {own_registry.production: 1}
        assert total(samples, "http_requests_total") < 1000, "the stale run's files were wiped"
        before = samples

        answers = send(base, requests)
        assert len(answers) == SINGLE + BATCHES
        after = settled(base, before, SINGLE + BATCHES)
        sent = {"/predict": SINGLE, "/predict/batch": BATCHES}
        for handler, count in sent.items():
            delta = total(after, "http_requests_total", handler=handler, status="2xx") - total(
                before, "http_requests_total", handler=handler, status="2xx"
            )
            assert delta == count, handler
        assert total(after, "http_requests_total") - total(before, "http_requests_total") == SINGLE + BATCHES
        assert (
            total(after, "predict_rows_total") - total(before, "predict_rows_total") == BATCHES * BATCH_ROWS
        )
        assert (
            total(after, "predictions_total") - total(before, "predictions_total")
            == SINGLE + BATCHES * BATCH_ROWS
        )
        assert total(after, "prediction_probability_count") - total(
            before, "prediction_probability_count"
        ) == (SINGLE + BATCHES * BATCH_ROWS)
        answered = by_pid(after, "http_worker_requests")
        served = {pid: answered[pid] - by_pid(before, "http_worker_requests").get(pid, 0) for pid in workers}
        assert all(count > 0 for count in served.values()), f"both workers served: {served}"
        assert sum(served.values()) == SINGLE + BATCHES
        assert {answer.get("model_version") for answer in answers[:SINGLE]} == {own_registry.production}
        assert served_versions(after) == {own_registry.production: 1}

        # Each worker adds its drift counts in the background: their sum over the two is every row scored,
        # what the recording rules compute the service's PSI from. The reference is one series per bin.
        def drift_rows(version: str) -> float:
            nonlocal samples
            samples = scrape(base)
            return total(samples, "prediction_drift_bin_rows_total", model_version=version)

        wait_until(
            lambda: drift_rows(own_registry.production) == SINGLE + BATCHES * BATCH_ROWS, 10, "drift counts"
        )
        references = [labels for (name, labels) in samples if name == "prediction_drift_reference_proportion"]
        assert len(references) == len(set(references)) == 10

        # The alias moves: each worker polls it on its own, and model_info (livemax) leaves the old version
        # only once no live worker serves it.
        own_registry.set_alias("production", own_registry.challenger)

        def moved() -> bool:
            nonlocal samples
            samples = scrape(base)
            return served_versions(samples) == {own_registry.challenger: 1}

        wait_until(moved, 60, "every worker on the new version")
        assert total(samples, "model_reloads_total", result="success") == 4
        moved_answers = send(base, requests[:200])
        assert Counter(answer["model_version"] for answer in moved_answers) == {own_registry.challenger: 200}
        latest = settled(base, samples, 200)
        now = by_pid(latest, "http_worker_requests")
        assert all(now[pid] > answered[pid] for pid in workers), "both workers answered on the new version"
        wait_until(lambda: drift_rows(own_registry.challenger) == 200, 10, "the new version's own counts")

        # A worker that dies is replaced by uvicorn's supervisor; its live gauges go with it, its counts stay.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            nonlocal samples
            samples = scrape(base)
            pids = set(by_pid(samples, "process_start_time_seconds"))
            return victim not in pids and len(pids) == 2 and total(samples, "model_loaded") == 1

        wait_until(replaced, 90, "the killed worker replaced")
        assert victim not in by_pid(samples, "http_worker_requests")
        assert served_versions(samples) == {own_registry.challenger: 1}
        assert total(samples, "http_requests_total") == total(latest, "http_requests_total")
    # Stopped: the supervisor's parent marked its workers dead once they had ended.
    assert not list(metrics_dir.glob("gauge_live*.db"))
