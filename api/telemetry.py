"""Every Prometheus metric the service exports: their names live here and nowhere else in api/.

Multiprocess mode (several workers, PROMETHEUS_MULTIPROC_DIR) will need this revisited: the
prediction-probability histogram below is a custom collector, and prometheus_client aggregates across
processes only the stock metric types, through their files.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
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
        registry.register(self)

    def observe(self, value: float) -> None:
        # As Histogram.observe: the first bucket whose bound is >= the value.
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds))
        with self._lock:
            for index in np.flatnonzero(counts).tolist():
                self._counts[index] += int(counts[index])
            # A running sum, value after value, as observe() keeps it (sum() would round differently).
            self._sum = float(np.cumsum(np.concatenate(([self._sum], values)))[-1])

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
        self.model_info = Gauge(
            "model_info",
            "The model being served (value is always 1).",
            ["name", "version", "alias"],
            registry=registry,
        )
        self.model_loaded = Gauge("model_loaded", "1 when a model is serving, else 0.", registry=registry)
        self.model_fast_path = Gauge(
            "model_fast_path",
            "1 when the compiled numpy predictor serves, 0 for the generic pandas path.",
            registry=registry,
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
        )
        self.model_last_successful_check = Gauge(
            "model_last_successful_check_timestamp_seconds",
            "Unix time of the last successful look-up of the model alias in the registry.",
            registry=registry,
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
        self.online_accuracy = Gauge(
            "model_online_accuracy",
            "Accuracy of the predictions in the feedback window, at the model's decision threshold.",
            registry=registry,
        )
        self.online_log_loss = Gauge(
            "model_online_log_loss", "Log loss of the predictions in the feedback window.", registry=registry
        )
        self.online_roc_auc = Gauge(
            "model_online_roc_auc",
            "ROC AUC of the predictions in the feedback window (NaN while it holds one class only).",
            registry=registry,
        )
        self.online_samples = Gauge(
            "model_online_samples", "Matched feedback items the online metrics rest on.", registry=registry
        )
        for gauge in (self.online_accuracy, self.online_log_loss, self.online_roc_auc):
            gauge.set(float("nan"))
        # Drift (api/drift.py), computed in the background over the sliding window, and the model's own
        # figures to compare against (api/monitoring.py): the alert rules and dashboards read these series,
        # so no threshold is written twice.
        self.feature_drift_psi = Gauge(
            "feature_drift_psi",
            "Population Stability Index of each feature over the drift window, against training.",
            ["feature"],
            registry=registry,
        )
        self.prediction_drift_psi = Gauge(
            "prediction_drift_psi",
            "Population Stability Index of the predicted probability over the drift window, against its "
            "distribution on held-out rows.",
            registry=registry,
        )
        self.drift_window_rows = Gauge(
            "drift_window_rows", "Rows in the drift window: what the PSI figures rest on.", registry=registry
        )
        self.drift_psi_threshold = Gauge(
            "feature_drift_psi_threshold",
            "The served model's PSI thresholds, by level (warning, alert), from its registry tags.",
            ["level"],
            registry=registry,
        )
        self.drift_min_window_rows = Gauge(
            "drift_min_window_rows",
            "Fewest rows in the drift window for a drift alert to fire, from the model's registry tags.",
            registry=registry,
        )
        self.model_quality_floor = Gauge(
            "model_quality_floor",
            "The served model's quality floors (a ceiling for lower-is-better metrics), by metric.",
            ["metric"],
            registry=registry,
        )
        self.model_test_metric = Gauge(
            "model_test_metric",
            "The served model's metrics on the held-out test split, by metric, from its registry tags.",
            ["metric"],
            registry=registry,
        )
        self.drift_window_rows.set(0)
