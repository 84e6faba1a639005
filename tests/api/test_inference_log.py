"""The inference log: every scored record reaches Parquet, readable while the service writes, and the
request path never waits for it."""

from __future__ import annotations

import re
import threading
from datetime import date, timedelta

import boto3
import pandas as pd
import pytest
from pydantic import ValidationError

from api import inference_log, log_store
from api.settings import Settings
from tests.api.support import metric, metric_samples, read_log, serving, wait_until

pytestmark = pytest.mark.slow

FILE_NAME = re.compile(r"[0-2][0-9]-[0-9a-f-]{36}\.parquet")


def test_the_log_holds_every_record_of_a_run_with_its_ids_and_reads_back_while_written(
    api_registry, tmp_path
):
    root = tmp_path / "inference"
    rows = api_registry.rows(40)
    settings = api_registry.settings(inference_log_dir=root, inference_log_flush_seconds=0.05)
    answers: dict[str, dict] = {}
    seen_while_running = []
    with serving(settings) as client:
        for index, row in enumerate(rows[:30]):
            response = client.post("/predict", json=row, headers={"X-Request-ID": f"one-{index}"})
            answers[f"one-{index}"] = {**row, **response.json()}
            seen_while_running.append(len(read_log(root)))  # a partial file would fail to read here
        for batch in (0, 1):
            records = rows[30 + 5 * batch : 35 + 5 * batch]
            response = client.post(
                "/predict/batch", json={"records": records}, headers={"X-Request-ID": f"b{batch}"}
            )
            for record, item in zip(records, response.json()["predictions"], strict=True):
                answers[item["request_id"]] = {**record, **item}
        wait_until(lambda: len(read_log(root)) == 40, timeout=30, what="every record in the log")
        logged = read_log(root)
        version = client.get("/model").json()["version"]
    assert seen_while_running == sorted(seen_while_running)  # readable throughout, and only growing
    assert sorted(logged["request_id"]) == sorted(answers)
    assert set(logged["model_name"].astype(str)) == {api_registry.model_name}
    assert set(logged["model_version"].astype(str)) == {version}
    assert set(logged["date"].astype(str)) == {pd.Timestamp.now(tz="UTC").date().isoformat()}
    assert all(FILE_NAME.fullmatch(path.name) for path in root.rglob("*.parquet"))
    assert not list(root.rglob(".*"))  # no hidden file left behind
    for record in logged.to_dict(orient="records"):
        sent = answers[record["request_id"]]
        assert record["probability"] == sent["probability"]
        assert record["label"] == sent["label"]
        for feature in [*api_registry.features["numeric"], *api_registry.features["categorical"]]:
            # A missing value is null in the file (pandas reads it back as NaN).
            assert (pd.isna(record[feature]) and sent[feature] is None) or record[feature] == sent[feature]
    assert (logged["time"].dt.tz is not None) and logged["time"].notna().all()


def test_a_file_is_only_visible_once_complete(tmp_path, monkeypatch):
    written = threading.Event()
    release = threading.Event()
    original = log_store.pq.write_table

    def slow_write(table, where, **kwargs):
        original(table, where, **kwargs)
        written.set()
        release.wait(30)

    monkeypatch.setattr(log_store.pq, "write_table", slow_write)
    path = tmp_path / "model_name=m" / "model_version=1" / "date=2026-01-01" / "00-x.parquet"
    table = inference_log.pa.table({"request_id": ["a"], "probability": [0.5]})
    store = log_store.LogStore.of(str(tmp_path))
    writer = threading.Thread(target=store.write, args=(table, str(path.relative_to(tmp_path))))
    writer.start()
    try:
        assert written.wait(30)
        assert (path.parent / ".00-x.parquet").exists() and not path.exists()
        assert pd.read_parquet(tmp_path).empty  # readers skip the `.` file
    finally:
        release.set()
        writer.join(30)
    assert list(pd.read_parquet(tmp_path)["request_id"]) == ["a"]


@pytest.fixture
def blocked_writer(monkeypatch):
    """The writer, stubbed to block forever on its first file, until the test sets the event it yields."""
    release = threading.Event()
    monkeypatch.setattr(inference_log, "write_parquet", lambda table, filesystem, path: release.wait())
    yield release
    release.set()


def test_a_full_queue_drops_and_counts_while_requests_complete(api_registry, tmp_path, blocked_writer):
    settings = api_registry.settings(
        inference_log_dir=tmp_path / "inference", inference_log_queue_rows=5, inference_log_flush_rows=1
    )
    rows = api_registry.rows(20)
    with serving(settings) as client:
        first = client.post("/predict", json=rows[0])
        assert first.status_code == 200
        # The writer takes the first record off the queue and blocks on writing it.
        wait_until(lambda: len(client.app.state.log_writers[0]._queue) == 0, what="the writer to take it")
        statuses = [client.post("/predict", json=row).status_code for row in rows[1:]]
        batch = client.post("/predict/batch", json={"records": rows[:3]})
        samples = metric_samples(client)
        blocked_writer.set()  # so that the shutdown's final flush does not wait for it in vain
    assert statuses == [200] * 19 and batch.status_code == 200
    # 5 records wait in the queue; the other 14 and the batch's 3 are dropped.
    assert metric(samples, "inference_log_dropped_total", log="inference") == 14 + 3
    assert metric(samples, "inference_log_rows_written_total", log="inference") == 0


def test_a_write_error_is_counted_and_fails_no_request(api_registry, tmp_path, monkeypatch):
    def failing(table, filesystem, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inference_log, "write_parquet", failing)
    settings = api_registry.settings(inference_log_dir=tmp_path / "inference", inference_log_flush_rows=1)
    with serving(settings) as client:
        statuses = [client.post("/predict", json=row).status_code for row in api_registry.rows(3)]
        wait_until(
            lambda: metric(metric_samples(client), "inference_log_write_errors_total", log="inference") == 3,
            timeout=30,
            what="the failed writes to be counted",
        )
    assert statuses == [200] * 3


def test_retention_deletes_the_old_date_partitions(api_registry, tmp_path):
    root = tmp_path / "inference"
    today = pd.Timestamp.now(tz="UTC").date()
    partitions = {
        age: root / "model_name=m" / "model_version=1" / f"date={(today - timedelta(days=age)).isoformat()}"
        for age in (0, 29, 30, 31, 400)
    }
    for directory in partitions.values():
        directory.mkdir(parents=True)
        pd.DataFrame({"request_id": ["x"]}).to_parquet(directory / "00-x.parquet")
    unrelated = root / "model_name=m" / "model_version=1" / "date=not-a-date"
    unrelated.mkdir()
    settings = api_registry.settings(inference_log_dir=root, inference_log_retention_days=30)
    with serving(settings):
        wait_until(lambda: not partitions[31].exists(), timeout=30, what="the old partitions to go")
    assert {age for age, directory in partitions.items() if directory.exists()} == {0, 29, 30}
    assert unrelated.exists()


def test_retention_counts_days_back_from_today(tmp_path):
    writer = inference_log.LogWriter(
        log_store.LogStore.of(str(tmp_path)), "inference", flush_seconds=1, flush_rows=1, retention_days=2, max_queued_rows=1,
        written=None, dropped=None, errors=None,
    )  # fmt: skip
    for day in ("2026-03-01", "2026-03-02", "2026-03-03"):
        (tmp_path / "model_name=m" / "model_version=1" / f"date={day}").mkdir(parents=True)
    deleted = writer.enforce_retention(today=date(2026, 3, 4))
    assert [path.rsplit("/", 1)[-1] for path in deleted] == ["date=2026-03-01"]


def test_without_a_directory_nothing_is_logged(api_registry):
    with serving(api_registry.settings()) as client:
        assert client.post("/predict", json=api_registry.rows(1)[0]).status_code == 200
        assert client.app.state.log_writers == []
        assert client.app.state.recorder.inference_log is None


@pytest.mark.parametrize("variable", ["inference_log_dir", "feedback_log_dir"])
@pytest.mark.parametrize(
    ("location", "refusal"),
    [("gs://bucket/inference", "local directory or an s3://"), ("s3:///inference", "names no bucket")],
)
def test_a_location_the_service_cannot_write_is_refused_at_start(variable, location, refusal):
    with pytest.raises(ValidationError, match=refusal):
        Settings(model_uri="models/m", **{variable: location})


def test_both_logs_go_to_s3_keep_their_layout_and_retention_and_read_back_while_written(
    api_registry, s3_bucket
):
    location = f"s3://{s3_bucket}/production/inference"
    store = log_store.LogStore.of(location)
    old_day = (pd.Timestamp.now(tz="UTC").date() - timedelta(days=31)).isoformat()
    old_partition = f"model_name={api_registry.model_name}/model_version=0/date={old_day}"
    store.write(inference_log.pa.table({"request_id": ["old"]}), f"{old_partition}/00-old.parquet")
    settings = api_registry.settings(
        inference_log_dir=location, inference_log_flush_seconds=0.05, inference_log_retention_days=30
    )
    this_model = f"{store.root}/model_name={api_registry.model_name}"

    def read_with_pandas() -> pd.DataFrame:  # what an analyst runs against the bucket
        try:
            frame = pd.read_parquet(this_model, filesystem=store.filesystem, partitioning="hive")
        except FileNotFoundError:  # the retention took the old partition; no file of this run yet
            return pd.DataFrame()
        return frame[frame["model_version"].astype(str) != "0"] if len(frame) else frame

    rows = api_registry.rows(20)
    answers, seen_while_running = {}, []
    with serving(settings) as client:
        for index, row in enumerate(rows):
            answer = client.post("/predict", json=row, headers={"X-Request-ID": f"s3-{index}"}).json()
            answers[answer["request_id"]] = answer
            if index % 5 == 4:
                seen_while_running.append(len(read_with_pandas()))
        feedback = client.post("/feedback", json={"request_id": "s3-0", "label": answers["s3-0"]["label"]})
        assert feedback.json()["matched"] == 1
        wait_until(
            lambda: len(read_with_pandas()) == len(rows), timeout=30, what="every record in the bucket"
        )
        feedback_store = log_store.LogStore.of(settings.feedback_log)
        wait_until(lambda: feedback_store.read().num_rows == 1, timeout=30, what="the feedback in the bucket")
        wait_until(
            lambda: old_partition not in str(store.date_partitions()), timeout=30, what="the retention"
        )
        version = client.get("/model").json()["version"]
    logged = read_with_pandas()
    assert seen_while_running == sorted(seen_while_running)
    assert dict(zip(logged["request_id"], logged["probability"], strict=True)) == {
        request_id: answer["probability"] for request_id, answer in answers.items()
    }
    assert set(logged["model_version"].astype(str)) == {version}
    assert feedback_store.read().column("request_id").to_pylist() == ["s3-0"]
    # The inference log's reader does not take the feedback log, which sits inside its prefix.
    assert store.read().num_rows == len(rows)
    keys = [
        item["Key"]
        for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for item in page.get("Contents", [])
    ]
    files = [key for key in keys if not key.endswith("/")]  # the retention leaves its parents' markers
    assert files and all(FILE_NAME.fullmatch(key.rsplit("/", 1)[-1]) for key in files)  # none left hidden
    assert all(key.startswith("production/inference/model_name=") or "/feedback/" in key for key in files)


def test_an_encoding_that_fails_half_way_leaves_no_object_in_the_bucket(s3_bucket, monkeypatch):
    def half_then_fail(table, sink, **options):
        sink.write(b"PAR1 half a file")
        raise OSError("the encoder failed")

    monkeypatch.setattr(log_store.pq, "write_table", half_then_fail)
    store = log_store.LogStore.of(f"s3://{s3_bucket}/inference")
    with pytest.raises(OSError, match="encoder failed"):
        store.write(
            inference_log.pa.table({"request_id": ["a"]}),
            "model_name=m/model_version=1/date=2026-01-01/00-a.parquet",
        )
    assert boto3.client("s3").list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    assert store.read().num_rows == 0  # a reader meets no footer-less file


def test_retention_goes_on_past_a_partition_another_writer_deleted_first(tmp_path, monkeypatch):
    store = log_store.LogStore.of(str(tmp_path))
    for day in ("2026-03-01", "2026-03-02"):
        (tmp_path / "model_name=m" / "model_version=1" / f"date={day}").mkdir(parents=True)
    original = log_store.LogStore.delete

    def raced(self: log_store.LogStore, directory: str) -> None:
        original(self, directory)
        if directory.endswith("2026-03-01"):  # the other worker was first
            raise FileNotFoundError(directory)

    monkeypatch.setattr(log_store.LogStore, "delete", raced)
    writer = inference_log.LogWriter(
        store, "inference", flush_seconds=1, flush_rows=1, retention_days=1, max_queued_rows=1,
        written=None, dropped=None, errors=None,
    )  # fmt: skip
    assert [path.rsplit("/", 1)[-1] for path in writer.enforce_retention(today=date(2026, 3, 4))] == [
        "date=2026-03-02"
    ]
    assert not list(tmp_path.glob("model_name=m/model_version=1/date=*"))
