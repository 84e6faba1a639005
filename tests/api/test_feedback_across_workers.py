"""/feedback with WORKERS=2 and an inference log: an item that reaches the worker that did not serve its
prediction waits and is joined from the log (api/feedback_join.py), so every item is matched, once, in
`feedback_total` summed over the workers; an id no worker served ends as unknown."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.api.support import (
    by_pid,
    negative_and_positive,
    scrape,
    send,
    total,
    wait_for_workers,
    wait_until,
)
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

pytestmark = pytest.mark.slow

HALF, BATCH_ROWS, PER_FEEDBACK = 150, 20, 10


@contextmanager
def paused(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_every_item_is_matched_once_whichever_worker_it_reaches(own_registry, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = subprocess_env(
        MLFLOW_TRACKING_URI=own_registry.tracking_uri,
        MODEL_NAME=own_registry.model_name,
        MODEL_ALIAS="production",
        WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        INFERENCE_LOG_DIR=str(tmp_path / "log"),
        INFERENCE_LOG_FLUSH_SECONDS="0.2",
        DRIFT_INTERVAL_SECONDS="0.2",
        # Long enough for a loaded machine to write and read the files, short for the unknown id's end.
        FEEDBACK_JOIN_WAIT_SECONDS="10",
    )
    for variable in ("MODEL_URI", "WEB_CONCURRENCY"):
        env.pop(variable, None)
    command = [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)]
    rows = own_registry.rows(50)
    negative, _ = negative_and_positive(own_registry.features)
    with running(command, tmp_path / "api.log", f"{base}/ready", timeout=120, env=env, cwd=REPO_ROOT):
        samples = wait_for_workers(base, 2)
        first, second = sorted(by_pid(samples, "process_start_time_seconds"))
        # Sent first, so that its wait runs out while the rest is sent.
        (never,) = send(base, [("/feedback", {"request_id": "never-served", "label": negative})])
        assert never["pending"] == 1
        # Which worker accepts a connection is the kernel's choice: a stopped one accepts none. Stopped for
        # a second or two each, well inside uvicorn's 5 s health check, which would replace it.
        with paused(first):  # the first half is served by the second worker...
            answers = send(base, [("/predict", rows[number % len(rows)]) for number in range(HALF)])
        with paused(second):  # ...the rest by the first, which then takes all the feedback
            answers += send(
                base,
                [("/predict", rows[number % len(rows)]) for number in range(HALF)]
                + [("/predict/batch", {"records": rows[:BATCH_ROWS]})],
            )
            items = [
                {"request_id": prediction["request_id"], "label": prediction["label"]}
                for answer in answers
                for prediction in answer.get("predictions", [answer])
            ]
            assert len(items) == 2 * HALF + BATCH_ROWS
            per_request = [
                items[start : start + PER_FEEDBACK] for start in range(0, len(items), PER_FEEDBACK)
            ]
            joined = send(base, [("/feedback", chunk) for chunk in per_request])
        # The second worker's predictions were joined from the log; the first's, at once.
        assert sum(answer["pending"] for answer in joined) == HALF
        assert sum(answer["matched"] for answer in joined) == HALF + BATCH_ROWS

        def settled() -> bool:
            nonlocal samples
            samples = scrape(base)
            return total(samples, "feedback_total", result="matched") >= len(items) and (
                total(samples, "feedback_total", result="unknown") >= 1
            )

        wait_until(settled, 60, "every item matched, and the never-served one unknown")
        counts = {
            result: total(samples, "feedback_total", result=result)
            for result in ("matched", "unknown", "duplicate")
        }
        assert counts == {"matched": len(items), "unknown": 1, "duplicate": 0}

        # And all of them reach the service-wide online counts the recording rules read, once each
        # (the workers add what they matched, from their index or from the log, every interval).
        def online_items() -> float:
            return total(scrape(base), "model_online_scores_total")

        wait_until(lambda: online_items() >= len(items), 10, "every match in the online counts")
        assert online_items() == len(items)
