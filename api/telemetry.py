"""Every Prometheus metric the service exports: their names live here and nowhere else in api/.

With several workers (WORKERS > 1, or whenever PROMETHEUS_MULTIPROC_DIR is set) prometheus_client runs in
its multiprocess mode: each worker writes its figures to files of its own in PROMETHEUS_MULTIPROC_DIR, and
/metrics, whichever worker answers it, merges every worker's files (`Telemetry.exposition`). Counters and
histograms add up; each gauge says how its workers' values combine (`multiprocess_mode`, with the reason
beside it). prometheus_client picks the mode once, when it is first imported, from the environment: tests
that build several apps in one process, without that variable, stay single-process.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# The model answers in well under a millisecond, so the buckets start at 25 µs; the usual defaults
# (0.1, 0.5, 1 s) would put every request in the first bucket.
LATENCY_BUCKETS = (0.000025, 0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015,
                   0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
PROBABILITY_BUCKETS = tuple(round(i * 0.05, 2) for i in range(1, 21))
RELOAD_RESULTS = ("success", "failure")
INFERENCE_SECONDS = "model_inference_seconds"
# request_validation_errors_total{field}: feature names come from the model, everything else is folded
# into these two so that a client cannot grow the label set.
BODY_FIELD = "body"
UNKNOWN_FIELD = "__extra__"
LOGS = ("inference", "feedback")
FEEDBACK_RESULTS = ("matched", "unknown", "duplicate")


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def in_multiprocess_mode() -> bool:
    """Whether this process keeps its metrics in PROMETHEUS_MULTIPROC_DIR's files. prometheus_client chose
    once, when it was imported, from the environment; its value class says which it chose."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


@contextmanager
def multiprocess_directory(workers: int) -> Iterator[Path | None]:
    """In the parent of the workers, before they start: PROMETHEUS_MULTIPROC_DIR emptied of the files an
    earlier run left (counters would otherwise start from its totals, and its dead workers' gauges be
    read as live), or a temporary one made (and removed afterwards) when several workers need one and
    none is set. None: one worker without the variable, the single-process mode."""
    location = os.environ.get(MULTIPROC_DIR)
    made = None
    if not location:
        if workers == 1:
            yield None
            return
        location = made = tempfile.mkdtemp(prefix="api-metrics-")
        os.environ[MULTIPROC_DIR] = location  # the workers inherit it
    path = Path(location)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # only prometheus_client's files: the directory may be shared
        stale.unlink()
    try:
        yield path
    finally:
        # uvicorn's supervisor has stopped every worker. They could not mark themselves dead: uvicorn ends a
        # worker by raising the signal it caught again, after its shutdown, so an atexit handler never
        # runs (tried: the files stayed). A worker that ends while the others serve is marked dead by the
        # next /metrics instead (live_pids).
        for pid in _pids_on_file(path) - {os.getpid()}:
            multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            os.environ.pop(MULTIPROC_DIR, None)  # the process is back as it was, as are its metrics calls


class ClearableGauge(Gauge):
    """A Gauge whose clear() holds in multiprocess mode too. There a series lives in its worker's file,
    which clear() does not touch: the series would keep its last value for good (a replaced model's
    model_info at 1). So each series this process set is first overwritten with `CLEARED`: NaN, no
    figure; model_info's subclass writes 0, not served, and /metrics leaves its 0s out."""

    CLEARED = math.nan

    def clear(self) -> None:
        if not in_multiprocess_mode():
            super().clear()
            return
        # The children stay in this process (prometheus_client warns that clear() does nothing to the files),
        # so a series set again later is the same child.
        for family in self.collect():
            for sample in family.samples:
                self.labels(**sample.labels).set(self.CLEARED)


class InfoGauge(ClearableGauge):
    CLEARED = 0.0


class BatchHistogram:
    """A label-less histogram that takes a whole batch in one call: numpy counts 1,000 values into buckets
    in a few microseconds, where `Histogram.observe` would scan the buckets once per value (over a
    millisecond per 1,000-row batch). Registered as a collector, it exposes what a stock `Histogram` of
    the same name and buckets would (`_bucket`, `_count`, `_sum`; `_created` aside), through public API.
    Thread-safe: /metrics collects in a worker thread while the event loop observes."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self._bounds = [float(bound) for bound in buckets]
        if self._bounds[-1] != float("inf"):
            self._bounds.append(float("inf"))
        # Each bound as the stock Histogram writes it (prometheus_client ships this helper untyped).
        self._le = [floatToGoString(bound) for bound in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        # In multiprocess mode the counts also go to this worker's file, under the keys a stock Histogram
        # of this name writes (prometheus_client's own value class, as Histogram uses it), so that
        # MultiProcessCollector adds the workers' buckets up as it does a stock one's. Still one write per
        # bucket a batch touched, not one per value: a stock Histogram there measured 2.7 ms per
        # 1,000-row batch (two file writes per value), this 0.07-0.14 ms.
        self._files: list[prometheus_values.MutexValue] | None = None
        if in_multiprocess_mode():
            self._files = [
                prometheus_values.ValueClass(
                    "histogram", name, name + "_bucket", ("le",), (le,), documentation
                )
                for le in self._le
            ]
            self._file_sum = prometheus_values.ValueClass(
                "histogram", name, name + "_sum", (), (), documentation
            )
        registry.register(self)

    def observe(self, value: float) -> None:
        # As Histogram.observe: the first bucket whose bound is >= the value.
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            if self._files is not None:
                self._files[index].inc(1)  # type: ignore[no-untyped-call]  # prometheus_client's, untyped
                self._file_sum.set(self._sum)

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds))
        with self._lock:
            for index in np.flatnonzero(counts).tolist():
                self._counts[index] += int(counts[index])
                if self._files is not None:
                    self._files[index].inc(int(counts[index]))  # type: ignore[no-untyped-call]
            # A running sum, value after value, as observe() keeps it (sum() would round differently).
            self._sum = float(np.cumsum(np.concatenate(([self._sum], values)))[-1])
            if self._files is not None:
                self._file_sum.set(self._sum)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = np.cumsum(counts).tolist()
        buckets = [(le, float(count)) for le, count in zip(self._le, cumulative, strict=True)]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class Telemetry:
    """One registry per app, so tests can build several apps in one process."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.multiprocess = in_multiprocess_mode()
        if not self.multiprocess:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        # HTTP, recorded by api/instrumentation.py. Handler is the route template ("none" for unknown
        # paths), status is grouped (2xx, 4xx, 5xx).
        self.http_requests = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ["handler", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Duration of HTTP requests in seconds",
            ["handler", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.http_in_progress = Gauge(
            "http_requests_inprogress",
            "Number of HTTP requests in progress.",
            ["method", "handler"],
            registry=registry,
            multiprocess_mode="livesum",  # the requests in flight in every live worker
        )
        # Which worker answered: multiprocess mode only (one process needs no such series). liveall: a
        # series per live worker, labelled pid by prometheus_client, gone with its worker.
        self.worker_requests: Gauge | None = None
        if self.multiprocess:
            self.worker_requests = Gauge(
                "http_worker_requests",
                "Requests (as in http_requests_total) answered by each live worker since it started, by pid.",
                registry=registry,
                multiprocess_mode="liveall",
            )
        self.client_disconnects = Counter(
            "http_client_disconnects_total",
            "Requests whose client left before sending the whole body (answered 499, in the 4xx class).",
            registry=registry,
        )
        self.connection_refusals = Counter(
            "http_connection_refusals_total",
            "Requests refused by the HTTP server before the app (api/server.py): 408 for a head past "
            "REQUEST_READ_TIMEOUT_SECONDS, 431 for one over MAX_HEADER_BYTES, 503 past "
            "MAX_CONCURRENT_REQUESTS; the connection is closed.",
            ["reason"],
            registry=registry,
        )
        self.body_timeouts = Counter(
            "http_body_timeouts_total",
            "Requests whose body did not arrive within REQUEST_READ_TIMEOUT_SECONDS (408, then closed).",
            registry=registry,
        )
        # The model.
        self.inference_seconds = Histogram(
            INFERENCE_SECONDS,
            "Encoding plus model time per request (one or many rows).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "predictions_total", "Predictions made, by predicted label.", ["label"], registry=registry
        )
        self.probability = BatchHistogram(
            "prediction_probability",
            "Predicted probability of the positive label.",
            PROBABILITY_BUCKETS,
            registry,
        )
        # livemax: a version reads 1 while any live worker serves it; once every worker has swapped, the old
        # one's series is 0 in every file (InfoGauge.clear) and /metrics leaves it out, as one process does.
        self.model_info = InfoGauge(
            "model_info",
            "The model being served (value is always 1).",
            ["name", "version", "alias"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        # livemin for the yes/no gauges: 0 as soon as one live worker says no, since that worker's share
        # of the requests is what the alert is about.
        self.model_loaded = Gauge(
            "model_loaded",
            "1 when a model is serving, else 0.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.model_fast_path = Gauge(
            "model_fast_path",
            "1 when the compiled numpy predictor serves, 0 for the generic pandas path.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.reloads = Counter(
            "model_reloads_total",
            "Model load attempts (startup and hot reload), by result.",
            ["result"],
            registry=registry,
        )
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        self.model_registry_up = Gauge(
            "model_registry_up",
            "1 when the last look-up of the model alias in the registry succeeded, else 0.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.model_last_successful_check = Gauge(
            "model_last_successful_check_timestamp_seconds",
            "Unix time of the last successful look-up of the model alias in the registry.",
            registry=registry,
            multiprocess_mode="livemin",  # the stalest worker's: each one polls the alias on its own
        )
        self.batch_rows = Counter(
            "predict_rows_total", "Rows received in /predict/batch requests.", registry=registry
        )
        self.validation_errors = Counter(
            "request_validation_errors_total",
            "Rejected request fields (422), by feature.",
            ["field"],
            registry=registry,
        )
        self.unknown_categories = Counter(
            "unknown_category_total",
            "Accepted categorical values the model never saw in training, by feature.",
            ["feature"],
            registry=registry,
        )
        self.model_loaded.set(0)
        self.model_fast_path.set(0)
        # Inference log and feedback: api/inference_log.py, api/feedback.py.
        self.log_rows_written = Counter(
            "inference_log_rows_written_total",
            "Records written to Parquet, by log (inference, feedback).",
            ["log"],
            registry=registry,
        )
        self.log_dropped = Counter(
            "inference_log_dropped_total",
            "Records dropped because the log writer's queue was full, by log.",
            ["log"],
            registry=registry,
        )
        self.log_write_errors = Counter(
            "inference_log_write_errors_total",
            "Records lost to a failed Parquet write (logged), by log.",
            ["log"],
            registry=registry,
        )
        for log in LOGS:
            self.log_rows_written.labels(log)
            self.log_dropped.labels(log)
            self.log_write_errors.labels(log)
        self.feedback = Counter(
            "feedback", "Feedback items, by how they joined their prediction.", ["result"], registry=registry
        )
        for result in FEEDBACK_RESULTS:
            self.feedback.labels(result)
        # The join from the inference log (api/feedback_join.py), with an inference log only.
        self.feedback_pending = Gauge(
            "feedback_pending",
            "Feedback items waiting for their prediction to show in the inference log (another worker's or "
            "pod's), counted in feedback_total once settled.",
            registry=registry,
            multiprocess_mode="livesum",  # what waits in every live worker
        )
        self.feedback_join_unreadable = Counter(
            "feedback_join_unreadable_files",
            "Inference log files the feedback join could not read (logged; not tried again).",
            registry=registry,
        )
        # The online and drift figures are each worker's own, over the requests it served: a PSI or an AUC
        # per worker cannot be added or averaged into the whole's. livemostrecent: the figures of whichever
        # worker published last, a real window over about 1/WORKERS of the traffic (each worker's figures
        # are not combined yet). The model's own floors, thresholds and test metrics are the same in every
        # worker that serves it: livemostrecent reads the model swapped in last.
        self.online_accuracy = Gauge(
            "model_online_accuracy",
            "Accuracy of the predictions in the feedback window, at the model's decision threshold.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.online_log_loss = Gauge(
            "model_online_log_loss",
            "Log loss of the predictions in the feedback window.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.online_roc_auc = Gauge(
            "model_online_roc_auc",
            "ROC AUC of the predictions in the feedback window (NaN while it holds one class only).",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.online_samples = Gauge(
            "model_online_samples",
            "Matched feedback items the online metrics rest on.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        for gauge in (self.online_accuracy, self.online_log_loss, self.online_roc_auc):
            gauge.set(float("nan"))
        # Drift (api/drift.py), computed in the background over the sliding window, and the model's own
        # figures to compare against (api/monitoring.py): the alert rules and dashboards read these series,
        # so no threshold is written twice.
        self.feature_drift_psi = ClearableGauge(
            "feature_drift_psi",
            "Population Stability Index of each feature over the drift window, against training.",
            ["feature"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.prediction_drift_psi = Gauge(
            "prediction_drift_psi",
            "Population Stability Index of the predicted probability over the drift window, against its "
            "distribution on held-out rows.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.drift_window_rows = Gauge(
            "drift_window_rows",
            "Rows in the drift window: what the PSI figures rest on.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.drift_psi_threshold = ClearableGauge(
            "feature_drift_psi_threshold",
            "The served model's PSI thresholds, by level (warning, alert), from its registry tags.",
            ["level"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.drift_min_window_rows = Gauge(
            "drift_min_window_rows",
            "Fewest rows in the drift window for a drift alert to fire, from the model's registry tags.",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.model_quality_floor = ClearableGauge(
            "model_quality_floor",
            "The served model's quality floors (a ceiling for lower-is-better metrics), by metric.",
            ["metric"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.model_test_metric = ClearableGauge(
            "model_test_metric",
            "The served model's metrics on the held-out test split, by metric, from its registry tags.",
            ["metric"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        # The same figures for the whole service, however many workers and pods: each worker adds what it
        # counted to these counters (in the background, every DRIFT_INTERVAL_SECONDS), Prometheus sums
        # them, and the recording rules of monitoring/prometheus/rules/drift.yml and feedback.yml compute
        # PSI and the online metrics from the sums. Labelled by model version, since a PSI compares a
        # version's rows with its own reference; every bin starts at 0 when a version is swapped in.
        self.feature_drift_bin_rows = Counter(
            "feature_drift_bin_rows",
            "Rows scored, by the bin of each feature they fall in (api/drift.py's bins), by model version.",
            ["model_version", "feature", "bin"],
            registry=registry,
        )
        self.prediction_drift_bin_rows = Counter(
            "prediction_drift_bin_rows",
            "Rows scored, by the bin of their predicted probability, by model version.",
            ["model_version", "bin"],
            registry=registry,
        )
        # The same in every worker that serves the version: livemax reads it.
        self.feature_drift_reference = ClearableGauge(
            "feature_drift_reference_proportion",
            "The share of training rows in each bin of each feature, by model version.",
            ["model_version", "feature", "bin"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.prediction_drift_reference = ClearableGauge(
            "prediction_drift_reference_proportion",
            "The share of held-out rows in each bin of the predicted probability, by model version.",
            ["model_version", "bin"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.drift_proportion_floor = Gauge(
            "drift_proportion_floor",
            "What an empty bin's proportion counts as in a PSI, so that it is large, not infinite.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Matched feedback, for the online metrics of the whole service: by the true class and the bin of
        # the predicted probability (ROC AUC from the bins, ties within a bin counting half), and the
        # items predicted right and their summed log loss (accuracy and mean log loss).
        self.online_scores = Counter(
            "model_online_scores",
            "Matched feedback items, by true class and by the bin of the predicted probability (its upper "
            "edge).",
            ["actual", "bin"],
            registry=registry,
        )
        self.online_scores_below = Counter(
            "model_online_scores_below",
            "Matched feedback items, by true class, whose predicted probability is in a lower bin than this.",
            ["actual", "bin"],
            registry=registry,
        )
        self.online_correct = Counter(
            "model_online_correct",
            "Matched feedback items whose predicted label, at the model's threshold, was the true one.",
            registry=registry,
        )
        self.online_loss = Counter(
            "model_online_loss",
            "The log loss of the matched feedback items, summed.",
            registry=registry,
        )
        self.drift_window_rows.set(0)
        self._merged: CollectorRegistry | None = None

    def exposition(self) -> bytes:
        """What /metrics answers: this process's registry, or in multiprocess mode every worker's files."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        if self._merged is None:
            self._merged = merged = CollectorRegistry()
            path = Path(os.environ[MULTIPROC_DIR])
            WorkerFiles(path, self.registry, merged)
            WorkerProcesses(path, merged)
            PlatformCollector(registry=merged)  # the same in every worker
        return generate_latest(self._merged)


def live_pids(path: Path) -> set[int]:
    """The workers whose live gauges are on file (every worker writes model_loaded when it starts). One
    that has ended (stopped, replaced, killed) is marked dead here, before its files are read: its live
    gauges, model_info among them, must not outlive it. Its counters and histograms stay, as totals do."""
    pids = set()
    for pid in _pids_on_file(path):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            # Two scrapes at once may both find it dead: the one that removes its files second is fine.
            with contextlib.suppress(FileNotFoundError):
                multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, another user's
            pids.add(pid)
        else:
            pids.add(pid)
    return pids


def _pids_on_file(path: Path) -> set[int]:
    """The pids in prometheus_client's live-gauge file names; any other file (the directory may be
    shared) is not ours."""
    stems = (file.stem.rsplit("_", 1)[1] for file in path.glob("gauge_live*_*.db"))
    return {int(stem) for stem in stems if stem.isdigit()}


class WorkerFiles:
    """Every worker's files merged by prometheus_client's MultiProcessCollector, keeping what the app
    registers: a gauge the app unregistered (the registry's with a fixed MODEL_URI, the drift ones with
    DRIFT_MONITORING=false) is still on file, at its initial value, and must not be exported."""

    def __init__(self, path: Path, app: CollectorRegistry, registry: CollectorRegistry) -> None:
        self.path, self.app = path, app
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        live_pids(self.path)  # first: a dead worker's live gauges go
        registered = {family.name for family in self.app.collect()}
        files = [str(file) for file in self.path.glob("*.db")]
        for family in multiprocess.MultiProcessCollector.merge(files, accumulate=True):  # type: ignore[no-untyped-call]
            if family.name not in registered:
                continue
            if family.name == "model_info":  # a replaced version reads 0: absent, as in one process
                family.samples = [sample for sample in family.samples if sample.value != 0]
            yield family


class WorkerProcesses:
    """The process_* series (memory, CPU, file descriptors, start time) of every live worker, labelled
    by pid: multiprocess mode drops ProcessCollector, which would describe whichever worker answers the
    scrape. Read from /proc at the scrape, as ProcessCollector does for its own process."""

    def __init__(self, path: Path, registry: CollectorRegistry) -> None:
        self.path = path
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid in sorted(live_pids(self.path)):
            for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return families.values()


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid
