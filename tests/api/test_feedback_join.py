"""The join of /feedback items to predictions another process served, through the inference log
(api/feedback_join.py): a waiting id is matched from a file that shows later, or from one read before;
it is unknown once its wait runs out; a bad file is counted and passed over; and in the app, a pending
item is counted once, when it settles, and reaches the online metrics as an immediate match does."""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from api.feedback_join import READ_ATTEMPTS, LogJoin, Outcome
from api.log_store import LogStore
from tests.api.support import metric, metric_samples, negative_and_positive, serving, wait_until

MODEL = "model_name=m"  # what an item waits in: any version of the model
PARTITION = f"{MODEL}/model_version=1"  # where a file is written


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def log_file(
    root: Path | str, partition: str, ids: list[str], probabilities: list[float], name: str = ""
) -> None:
    """A file as another worker's inference log writer leaves it (its features left out)."""
    table = pa.table(
        {
            "request_id": pa.array(ids, pa.string()),
            "time": pa.array([datetime.now(UTC)] * len(ids), pa.timestamp("us", tz="UTC")),
            "probability": pa.array(probabilities, pa.float64()),
            "label": pa.array(["x"] * len(ids), pa.string()),
        }
    )
    name = name or f"00-{uuid.uuid4()}"
    LogStore.of(str(root)).write(table, f"{partition}/date={today()}/{name}.parquet")


def settle(join: LogJoin) -> Outcome:
    return asyncio.run(join.run_pass())


def test_a_waiting_id_is_matched_from_a_file_that_shows_later_or_was_read_before(tmp_path):
    join = LogJoin(LogStore.of(str(tmp_path)), wait=60, size=100, clock=Clock())
    join.add("other-1", True, MODEL)
    join.add("batch-2", False, MODEL)
    assert settle(join) == Outcome()  # no file yet: both wait
    assert list(join.pending) == ["other-1", "batch-2"]

    log_file(tmp_path, PARTITION, ["other-0", "other-1"], [0.1, 0.2])
    log_file(tmp_path, PARTITION, ["batch-0", "batch-1", "batch-2"], [0.3, 0.4, 0.5])  # `<id>-<i>` each
    assert sorted(settle(join).matched) == [("batch-2", 0.5, False), ("other-1", 0.2, True)]
    assert not join.pending

    # A label that comes after its prediction's file was read finds it in what was read.
    join.add("other-0", False, MODEL)
    assert settle(join) == Outcome([("other-0", 0.1, False)], 0)


def test_an_id_still_missing_when_its_wait_runs_out_is_unknown(tmp_path):
    clock = Clock()
    join = LogJoin(LogStore.of(str(tmp_path)), wait=10, size=2, clock=clock)
    join.add("first", True, MODEL)
    clock.now = 5
    join.add("second", True, MODEL)
    assert settle(join) == Outcome()
    clock.now = 10
    assert settle(join) == Outcome([], 1)  # "first" waited its 10 s
    assert list(join.pending) == ["second"]

    # Past its size, the oldest waiting item is pushed out: unknown at the next pass.
    join.add("third", True, MODEL)
    join.add("fourth", True, MODEL)
    assert list(join.pending) == ["third", "fourth"]
    assert settle(join) == Outcome([], 1)
    assert join.abandon() == 2 and not join.pending  # the process ends: what waits is unknown


def test_a_bad_file_is_counted_once_and_the_others_are_still_read(tmp_path):
    join = LogJoin(LogStore.of(str(tmp_path)), wait=60, size=100, clock=Clock())
    day = tmp_path / PARTITION / f"date={today()}"
    day.mkdir(parents=True)
    (day / "00-broken.parquet").write_bytes(b"not parquet")
    (day / ".00-unfinished.parquet").write_bytes(b"a writer's file, not closed yet")
    elsewhere = tmp_path / "model_name=other/model_version=1" / f"date={today()}"
    elsewhere.mkdir(parents=True)
    (elsewhere / "00-broken.parquet").write_bytes(b"not read: another model's")
    (tmp_path / PARTITION / "date=2000-01-01").mkdir()
    (tmp_path / PARTITION / "date=2000-01-01" / "00-old.parquet").write_bytes(b"not read: too old")
    log_file(tmp_path, PARTITION, ["good-0"], [0.7])
    # Not the service's: a probability that is none is no match, and the join goes on.
    log_file(tmp_path, PARTITION, ["nan-0", "negative-0", "above-0"], [math.nan, -0.5, 1.5])

    for request_id in ("good-0", "nan-0", "negative-0", "above-0"):
        join.add(request_id, True, MODEL)
    assert settle(join).matched == [("good-0", 0.7, True)]
    assert join.unreadable == 1
    assert list(join.pending) == ["nan-0", "negative-0", "above-0"]
    join.add("later", True, MODEL)
    settle(join)
    assert join.unreadable == 1  # a file is read once, broken or not


class FlakyReads:
    """A filesystem whose reads fail with an I/O error, as an S3 request can, the first `failures` times."""

    def __init__(self, filesystem: pafs.FileSystem, failures: int, only: str = "") -> None:
        self.filesystem, self.failures, self.only = filesystem, failures, only

    def get_file_info(self, selector):
        return self.filesystem.get_file_info(selector)

    def open_input_file(self, path: str):
        if self.failures and self.only in path:
            self.failures -= 1
            raise OSError(f"When reading information for key '{path}': AWS Error NETWORK_CONNECTION")
        return self.filesystem.open_input_file(path)


@pytest.mark.parametrize("failures", [1, READ_ATTEMPTS])
def test_a_file_that_fails_to_read_is_tried_again_before_it_counts_as_unreadable(tmp_path, failures):
    local = LogStore.of(str(tmp_path))
    store = LogStore(FlakyReads(local.filesystem, failures), local.root, local.location)
    join = LogJoin(store, wait=60, size=100, clock=Clock())
    log_file(tmp_path, PARTITION, ["flaky-0"], [0.25])
    join.add("flaky-0", True, MODEL)
    outcomes = [settle(join) for _ in range(READ_ATTEMPTS)]
    if failures < READ_ATTEMPTS:  # a transient error: the next pass reads it
        assert outcomes[0] == Outcome() and outcomes[1] == Outcome([("flaky-0", 0.25, True)], 0)
        assert join.unreadable == 0
    else:  # an error that lasts: given up on after READ_ATTEMPTS, counted once
        assert all(outcome == Outcome() for outcome in outcomes)
        assert join.unreadable == 1 and list(join.pending) == ["flaky-0"]
        settle(join)
        assert join.unreadable == 1


def test_a_file_read_late_still_yields_to_a_newer_one(tmp_path):
    """Where a request id repeats (a client's X-Request-ID), the newest file's record wins, also when the
    older file could only be read at a later pass."""
    local = LogStore.of(str(tmp_path))
    join = LogJoin(LogStore(FlakyReads(local.filesystem, 1, only="/00-"), local.root, local.location),
                   wait=60, size=100, clock=Clock())  # fmt: skip
    day = tmp_path / PARTITION / f"date={today()}"
    log_file(tmp_path, PARTITION, ["reused", "older-only"], [0.1, 0.3], name="00-older")
    log_file(tmp_path, PARTITION, ["reused"], [0.9], name="01-newer")
    os.utime(day / "00-older.parquet", ns=(10**18, 10**18))
    os.utime(day / "01-newer.parquet", ns=(2 * 10**18, 2 * 10**18))
    join.add("older-only", True, MODEL)
    assert settle(join) == Outcome()  # the older file failed to read: it waits for the next pass
    assert settle(join) == Outcome([("older-only", 0.3, True)], 0)
    join.add("reused", False, MODEL)
    assert settle(join) == Outcome([("reused", 0.9, False)], 0)


@pytest.mark.slow
def test_the_join_reads_a_log_in_s3(s3_bucket):
    """Several pods share a log through one s3:// prefix: its date partitions are listed as prefixes."""
    location = f"s3://{s3_bucket}/production/inference"
    join = LogJoin(LogStore.of(location), wait=60, size=100, clock=Clock())
    log_file(location, PARTITION, ["pod-b-0", "pod-b-1"], [0.6, 0.4])
    # Another version's: a pod that swapped models still gets labels for the predictions before.
    log_file(location, f"{MODEL}/model_version=2", ["pod-b-2"], [0.5])
    log_file(location, "model_name=other/model_version=1", ["pod-b-3"], [0.5])  # another model's
    for request_id in ("pod-b-1", "pod-b-2", "pod-b-3"):
        join.add(request_id, False, MODEL)
    assert sorted(settle(join).matched) == [("pod-b-1", 0.4, False), ("pod-b-2", 0.5, False)]
    assert list(join.pending) == ["pod-b-3"] and join.unreadable == 0


def test_nothing_waiting_reads_nothing(tmp_path):
    join = LogJoin(LogStore.of(str(tmp_path)), wait=60, size=100, clock=Clock())
    day = tmp_path / PARTITION / f"date={today()}"
    day.mkdir(parents=True)
    (day / "00-broken.parquet").write_bytes(b"not parquet")
    join.add("x", True, MODEL)
    join.abandon()
    assert settle(join) == Outcome() and join.unreadable == 0


# ---------------------------------------------------------------------------------------------- in the app
@pytest.mark.slow
def test_feedback_for_a_prediction_logged_elsewhere_is_pending_then_matched_once(api_registry, tmp_path):
    negative, positive = negative_and_positive(api_registry.features)
    settings = api_registry.settings(
        inference_log_dir=tmp_path, inference_log_flush_seconds=0.05, drift_interval_seconds=0.05
    )
    partition = f"model_name={api_registry.model_name}/model_version={api_registry.production}"
    with serving(settings) as client:
        log_file(tmp_path, partition, ["elsewhere-0"], [0.25])  # as another worker logged it
        before = metric_samples(client)

        def counted(result: str) -> float:
            return metric(metric_samples(client), "feedback_total", result=result) - metric(
                before, "feedback_total", result=result
            )

        items = [
            {"request_id": "elsewhere-0", "label": positive},
            {"request_id": "nowhere-0", "label": negative},
            {"request_id": "elsewhere-0", "label": negative},  # a second label while the first waits
        ]
        answer = client.post("/feedback", json=items).json()
        assert {key: answer[key] for key in ("matched", "unknown", "duplicate", "pending")} == {
            "matched": 0, "unknown": 0, "duplicate": 1, "pending": 2,
        }  # fmt: skip
        wait_until(lambda: counted("matched") == 1 and counted("unknown") == 1, 30, "both settled")
        # The match reached the online window with the logged probability and the first label.
        wait_until(lambda: metric(metric_samples(client), "model_online_samples") == 1, 30, "the window")
        assert metric(metric_samples(client), "model_online_log_loss") == pytest.approx(-math.log(0.25))

        again = client.post("/feedback", json={"request_id": "elsewhere-0", "label": positive}).json()
        assert (again["duplicate"], again["pending"]) == (1, 0)
        assert [counted(result) for result in ("matched", "unknown", "duplicate")] == [1, 1, 2]


@pytest.mark.slow
def test_what_waits_and_the_unreadable_files_are_exported(api_registry, tmp_path):
    negative, _ = negative_and_positive(api_registry.features)
    settings = api_registry.settings(
        inference_log_dir=tmp_path, drift_interval_seconds=0.05, feedback_join_wait_seconds=3600
    )
    day = tmp_path / f"model_name={api_registry.model_name}/model_version={api_registry.production}"
    with serving(settings) as client:
        assert metric(metric_samples(client), "feedback_pending") == 0
        (day / f"date={today()}").mkdir(parents=True)
        (day / f"date={today()}" / "00-broken.parquet").write_bytes(b"not parquet")
        items = [{"request_id": f"nowhere-{index}", "label": negative} for index in range(3)]
        assert client.post("/feedback", json=items).json()["pending"] == 3
        wait_until(
            lambda: metric(metric_samples(client), "feedback_join_unreadable_files_total") == 1,
            30,
            "the broken file counted",
        )
        samples = metric_samples(client)
        assert metric(samples, "feedback_pending") == 3  # an hour's wait: they still wait
        assert metric(samples, "feedback_total", result="unknown") == 0
