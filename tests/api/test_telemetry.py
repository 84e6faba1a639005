"""/metrics after traffic: the request metrics with fine buckets, and the model's own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from api.telemetry import LATENCY_BUCKETS, PROBABILITY_BUCKETS, BatchHistogram
from tests.api.support import metric, metric_samples, negative_and_positive, serving

pytestmark = pytest.mark.slow

SINGLE, BATCH_ROWS, BAD = 12, 40, 3


def numeric_feature(api_registry) -> str:
    return next(iter(api_registry.metadata(api_registry.production)["numeric"]))


@pytest.fixture(scope="module")
def traffic(api_registry):
    """One app, a known mix of requests, then one scrape."""
    with serving(api_registry.settings()) as client:
        rows = api_registry.rows(SINGLE + BATCH_ROWS)
        probabilities = [client.post("/predict", json=row).json()["probability"] for row in rows[:SINGLE]]
        batch = client.post("/predict/batch", json={"records": rows[SINGLE:]}).json()["predictions"]
        probabilities += [item["probability"] for item in batch]
        for _ in range(BAD):
            assert (
                client.post("/predict", json=rows[0] | {numeric_feature(api_registry): -5}).status_code == 422
            )
        assert client.get("/no/such/path/12345").status_code == 404
        assert client.get("/another/unknown").status_code == 404
        yield client, metric_samples(client), probabilities


def test_requests_are_counted_by_handler_and_grouped_status(traffic):
    _, samples, _ = traffic
    assert metric(samples, "http_requests_total", handler="/predict", method="POST", status="2xx") == SINGLE
    assert metric(samples, "http_requests_total", handler="/predict", method="POST", status="4xx") == BAD
    assert metric(samples, "http_requests_total", handler="/predict/batch", method="POST", status="2xx") == 1


def test_unknown_paths_share_one_label(traffic):
    _, samples, _ = traffic
    handlers = {dict(labels)["handler"] for name, labels in samples if name == "http_requests_total"}
    assert "none" in handlers
    assert not any("no/such" in handler or "unknown" in handler for handler in handlers)
    assert metric(samples, "http_requests_total", handler="none", status="4xx") == 2


def test_latency_buckets_resolve_sub_millisecond_requests(traffic):
    _, samples, _ = traffic
    bounds = {
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "http_request_duration_seconds_bucket" and dict(labels).get("handler") == "/predict"
    }
    assert {0.0001, 0.0005, 0.001} <= bounds
    assert len([bound for bound in bounds if bound <= 0.001]) >= 8
    assert bounds == {*LATENCY_BUCKETS, float("inf")}
    count = metric(samples, "http_request_duration_seconds_count", handler="/predict", method="POST")
    assert count == SINGLE + BAD


def test_model_metrics_after_traffic(traffic, api_registry):
    _, samples, probabilities = traffic
    predicted = SINGLE + BATCH_ROWS
    assert metric(samples, "model_inference_seconds_count") == SINGLE + 1
    assert metric(samples, "predictions_total") == predicted
    negative, positive = negative_and_positive(api_registry.features)
    positives = sum(1 for probability in probabilities if probability > 0.5)
    assert metric(samples, "predictions_total", label=positive) == positives
    assert metric(samples, "predictions_total", label=negative) == predicted - positives
    assert metric(samples, "prediction_probability_count") == predicted
    assert metric(samples, "prediction_probability_sum") == pytest.approx(sum(probabilities))
    assert metric(samples, "predict_rows_total") == BATCH_ROWS
    assert metric(samples, "request_validation_errors_total", field=numeric_feature(api_registry)) == BAD
    assert (
        metric(
            samples,
            "model_info",
            name=api_registry.model_name,
            version=api_registry.production,
            alias="production",
        )
        == 1
    )
    assert metric(samples, "model_loaded") == 1 and metric(samples, "model_fast_path") == 1
    assert metric(samples, "model_reloads_total", result="success") == 1
    assert ("model_reloads_total", frozenset({("result", "failure")})) in samples


def test_metrics_are_not_counted_as_traffic(traffic):
    _, samples, _ = traffic
    assert metric(samples, "http_requests_total", handler="/metrics") == 0


class Exploding:
    """A predictor that fails where the service calls it, as a bug in a predictor would."""

    kind = "exploding"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _boom(self, call: str) -> None:
        self.calls.append(call)
        raise RuntimeError("boom")

    def prepare(self, columns):
        self._boom("prepare")

    def score(self, prepared):
        self._boom("score")

    def predict_rows(self, rows):
        self._boom("predict_rows")

    def predict_one(self, row):
        self._boom("predict_one")


def test_an_unhandled_exception_is_a_500_counted_as_5xx(api_registry):
    with serving(
        api_registry.settings(model_uri=str(api_registry.model_dir(api_registry.production)))
    ) as client:
        service = client.app.state.service
        exploding = Exploding()
        service.model = dataclasses.replace(service.model, predictor=exploding)
        response = client.post("/predict", json=api_registry.rows(1)[0])
        assert response.status_code == 500
        assert exploding.calls == ["predict_one"]  # the 500 is the predictor's RuntimeError, nothing earlier
        batch = client.post("/predict/batch", json={"records": api_registry.rows(2)})
        assert batch.status_code == 500 and exploding.calls == ["predict_one", "prepare"]
        samples = metric_samples(client)
        assert metric(samples, "http_requests_total", handler="/predict", status="5xx") == 1
        assert metric(samples, "http_requests_total", handler="/predict/batch", status="5xx") == 1
        assert client.get("/health").status_code == 200


def exposition(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, round(sample.value, 9))
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    ]


def test_a_batch_histogram_exposes_what_a_stock_histogram_fed_one_by_one_does():
    values = np.concatenate([np.random.default_rng(7).random(500), [0.0, 0.05, 0.1, 0.95, 1.0, 2.0]])
    stock, batched = CollectorRegistry(), CollectorRegistry()
    one_by_one = Histogram("p", "p", buckets=PROBABILITY_BUCKETS, registry=stock)
    for value in values.tolist():
        one_by_one.observe(value)
    histogram = BatchHistogram("p", "p", PROBABILITY_BUCKETS, batched)
    histogram.observe_many(values[:300])
    histogram.observe_many(values[:0])
    for value in values[300:].tolist():
        histogram.observe(value)
    assert exposition(batched) == exposition(stock)
    assert generate_latest(batched) == b"".join(
        line + b"\n" for line in generate_latest(stock).splitlines() if b"_created" not in line
    )
