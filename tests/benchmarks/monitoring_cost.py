"""What drift monitoring and the inference log cost, in CPU time per request, in process: no HTTP, no wrk.

Two apps serve the registered model `MODEL_NAME@MODEL_ALIAS` side by side in one event loop: one as
`make run` serves it (drift counted, every record to an inference log in a temporary directory), one with
both off. Each is driven through its ASGI callable, the whole middleware and route included, with the same
bodies as `make bench` (1,000-row batches, or single records). Blocks of requests alternate between the
two, and each block is charged the process's CPU time (`time.process_time`: the event loop, the scoring
thread and the log writer's thread alike) from its first request until the writer has drained what the
block queued, so the writer's table building is in the monitored figure. CPU time rather than wall time:
the machine is shared, and CPU time is what the two cores give the requests. The writer thread's own CPU
is also reported (its thread clock), and the event loop's (the thread that runs it, while the requests
run: what the GIL-bound request path spends), and `--parts` times each step of a batch on its own.

    python -m tests.benchmarks.monitoring_cost [--kind batch|single|both] [--rounds 12] [--requests 40]
    python -m tests.benchmarks.monitoring_cost --parts

It reports medians and asserts nothing (a benchmark is not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

BATCH_ROWS = 1000


def thread_seconds(thread: threading.Thread | None) -> float:
    """A thread's CPU time so far (Linux: its own clock), 0 for none."""
    if thread is None or thread.ident is None or not thread.is_alive():
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


class Client:
    """One app, called through ASGI as uvicorn would, with the lifespan's state in each scope."""

    def __init__(self, name: str, app: Any, state: dict[str, Any]) -> None:
        self.name, self.app, self.state = name, app, state
        self.samples: list[float] = []  # CPU µs per request, one per block
        self.writer_samples: list[float] = []  # of which the writer thread's
        self.loop_samples: list[float] = []  # of which the event loop's (this thread's)

    async def post(self, path: str, body: bytes) -> bytes:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
            "state": dict(self.state),
        }
        sent = False
        out: list[bytes] = []
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # never disconnects
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                out.append(message.get("body", b""))

        await self.app(scope, receive, send)
        if status != 200:
            raise RuntimeError(f"{self.name}: {path} answered {status}: {b''.join(out)[:300]!r}")
        return b"".join(out)

    @property
    def writers(self) -> list[Any]:
        return list(self.app.state.log_writers)


async def drained(client: Client) -> None:
    """Until the client's log writers hold nothing queued (their next pass took it into tables)."""
    for writer in client.writers:
        while writer._queued_rows:
            await asyncio.sleep(0.02)
    if client.writers:
        await asyncio.sleep(0.15)  # the pass that took the last items is building their table


async def block(client: Client, path: str, bodies: list[bytes], requests: int) -> None:
    writer_threads = [writer._thread for writer in client.writers]
    writer_before = sum(map(thread_seconds, writer_threads))
    started, loop_started = time.process_time(), time.thread_time()
    for index in range(requests):
        await client.post(path, bodies[index % len(bodies)])
    loop = time.thread_time() - loop_started
    await drained(client)
    spent = time.process_time() - started
    writer = sum(map(thread_seconds, writer_threads)) - writer_before
    client.samples.append(spent / requests * 1e6)
    client.writer_samples.append(writer / requests * 1e6)
    client.loop_samples.append(loop / requests * 1e6)


def payloads(served: Any, kind: str) -> tuple[str, list[bytes]]:
    from tests.benchmarks.api import benchmark_rows

    rows = benchmark_rows(served, BATCH_ROWS * 5)
    if kind == "batch":
        bodies = [{"records": rows[i : i + BATCH_ROWS]} for i in range(0, len(rows), BATCH_ROWS)]
        return "/predict/batch", [json.dumps(body).encode() for body in bodies]
    complete = [row for row in rows if all(value is not None for value in row.values())][:200]
    return "/predict", [json.dumps(row).encode() for row in complete]


async def compare(options: argparse.Namespace, log_dir: Path) -> None:
    from api.main import create_app
    from api.settings import Settings

    variants = {
        "monitored": {"drift_monitoring": True, "inference_log_dir": log_dir},
        "unmonitored": {"drift_monitoring": False, "inference_log_dir": None},
    }
    async with AsyncExitStack() as stack:
        clients = []
        for name, overrides in variants.items():
            app = create_app(Settings(model_uri=None, **overrides))
            state = await stack.enter_async_context(app.router.lifespan_context(app))
            while app.state.service.model is None:
                await asyncio.sleep(0.05)
            clients.append(Client(name, app, state or {}))
        served = clients[0].app.state.service.model
        print(f"monitoring_cost: {served.registry.name} v{served.registry.version} ({served.predictor.kind})")
        kinds = ["batch", "single"] if options.kind == "both" else [options.kind]
        for kind in kinds:
            path, bodies = payloads(served, kind)
            requests = options.requests if kind == "batch" else options.requests * 25
            for client in clients:
                await block(client, path, bodies, requests)  # warm-up, not counted
                client.samples, client.writer_samples, client.loop_samples = [], [], []
            for round_index in range(options.rounds):
                order = clients if round_index % 2 == 0 else clients[::-1]
                for client in order:
                    await block(client, path, bodies, requests)
            on, off = (statistics.median(client.samples) for client in clients)
            loop_on, loop_off = (statistics.median(client.loop_samples) for client in clients)
            writer = statistics.median(clients[0].writer_samples)
            # Each round's two blocks ran back to back: their ratio keeps most of the machine's drift out.
            paired = statistics.median(a / b for a, b in zip(*(c.samples for c in clients), strict=True))
            loop_paired = statistics.median(
                a / b for a, b in zip(*(c.loop_samples for c in clients), strict=True)
            )
            unit = f"{BATCH_ROWS:,}-row batch" if kind == "batch" else "single record"
            print(
                f"{unit}: CPU per request, medians of {options.rounds} interleaved blocks of {requests}: "
                f"monitored {on:,.0f} µs (writer thread {writer:,.0f}), unmonitored {off:,.0f} µs; "
                f"the event loop's alone {loop_on:,.0f} and {loop_off:,.0f} µs\n"
                f"  cost, median of the rounds' ratios: {paired - 1:+.1%} (the event loop's {loop_paired - 1:+.1%})"
            )
            for client in clients:
                print(f"  {client.name:<12} {[round(sample) for sample in client.samples]}")


def timed(label: str, work: Callable[[], Any], repeat: int) -> Any:
    result = work()
    samples = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeat):
            work()
        samples.append((time.process_time() - started) / repeat * 1e6)
    print(f"  {label:<44}{statistics.median(samples):>9,.1f} µs")
    return result


async def parts(options: argparse.Namespace, log_dir: Path) -> None:
    """Each step of a monitored 1,000-row batch on its own, CPU µs per batch (median of 5 runs)."""
    import numpy as np
    import pyarrow as pa
    from pyarrow.fs import LocalFileSystem

    from api.drift import DriftMonitor
    from api.inference_log import BATCH
    from api.log_store import write_parquet
    from api.main import create_app
    from api.responses import batch_body
    from api.routes.predictions import numeric_arrays
    from api.settings import Settings

    app = create_app(Settings(model_uri=None, drift_monitoring=True, inference_log_dir=log_dir))
    async with app.router.lifespan_context(app):
        service = app.state.service
        while service.model is None:
            await asyncio.sleep(0.05)
        model = service.model
        _, bodies = payloads(model, "batch")
        body = bodies[0]
        telemetry = service.telemetry
        drift: DriftMonitor = service._drift
        predictor = model.predictor
        repeat = options.requests
        print(f"monitoring_cost --parts: {model.registry.name} v{model.registry.version}, {BATCH_ROWS} rows")
        columns = timed("decode (parse_batch)", lambda: model.requests.parse_batch(body, telemetry), repeat)
        arrays = timed("route: numeric_arrays", lambda: numeric_arrays(columns, model), repeat)
        numeric = timed("drift.numeric_arrays", lambda: drift.numeric_arrays(arrays), repeat)
        converted = {**arrays, **numeric}
        codes: dict[str, Any] = {}
        prepared, unknown = timed("predictor.prepare", lambda: predictor.prepare(converted, codes), repeat)
        probabilities = timed("predictor.score", lambda: predictor.score(prepared), repeat)
        one_hot = prepared if isinstance(prepared, np.ndarray) else None
        timed(
            "drift.count_batch", lambda: drift.count_batch(converted, probabilities, one_hot, unknown), repeat
        )
        positive = probabilities > model.threshold
        recorder = app.state.recorder
        stream = recorder.inference_log._stream_of(model)
        # Stop the writer: submit then only queues, and the test builds the tables itself.
        for writer in app.state.log_writers:
            writer.stop()
        timed(
            "recorder.batch (index + submit)",
            lambda: recorder.batch(model, "0123456789abcdef", converted, probabilities, positive, codes),
            repeat,
        )
        for writer in app.state.log_writers:
            writer._queue.clear()
            writer._queued_rows = 0
        entry = (time.time(), (BATCH, "0123456789abcdef", converted, probabilities, positive, codes))
        table = timed("writer: stream.build (one batch)", lambda: stream.build([entry]), repeat)
        big = pa.concat_tables([table] * 20)
        target = str(log_dir / "parts.parquet")
        timed(
            "writer: write_parquet (per 1,000 of 20,000)",
            lambda: write_parquet(big, LocalFileSystem(), target),
            3,
        )
        registry = model.registry
        timed(
            "batch_body",
            lambda: batch_body(
                "0123456789abcdef", registry.name, registry.version, model.labels, probabilities, positive
            ),
            repeat,
        )
    print("  (write_parquet's figure is for 20,000 rows: divide by 20)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=("batch", "single", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=12, help="blocks per app, interleaved")
    parser.add_argument("--requests", type=int, default=40, help="batches per block (single records: x25)")
    parser.add_argument("--parts", action="store_true", help="time each step of a monitored batch instead")
    options = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with tempfile.TemporaryDirectory(prefix="monitoring-cost-") as directory:
        work = parts if options.parts else compare
        runner(work(options, Path(directory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
