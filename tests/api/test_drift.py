"""Drift through the service: rows of the test split show none, a shifted feature shows, the sliding
window forgets it, a swap starts afresh, and the thresholds, floors and test metrics come from the
registered version's tags. The PSI step is run on the app's event loop, where the background task runs
it, instead of waiting DRIFT_INTERVAL_SECONDS."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from api.drift import DriftMonitor, feature_bins
from api.fast import FastPredictor
from api.loading import load_registered
from api.monitoring import MONITORING_TAG
from api.predictor import columns_of
from api.registry import resolve_alias
from tests.api.support import metric, metric_samples, serving, wait_until

pytestmark = pytest.mark.slow

# A window smaller than the 600-row test split of the session's sample pipeline, so that sending the
# split once refills it completely.
WINDOW_ROWS, BUCKETS, CHUNK = 500, 5, 100
DRIFT_SERIES = (
    "feature_drift_psi",
    "prediction_drift_psi",
    "drift_window_rows",
    "feature_drift_psi_threshold",
    "drift_min_window_rows",
)


def drift_settings(registry, **overrides):
    # An hour between background runs: the tests run the step themselves, at the moment they choose.
    values = {"drift_window_rows": WINDOW_ROWS, "drift_buckets": BUCKETS, "drift_interval_seconds": 3600}
    return registry.settings(**{**values, **overrides})


def send(client, rows) -> None:
    """The first rows one by one (the single-record path), the rest in batches."""
    for row in rows[:20]:
        assert client.post("/predict", json=row).status_code == 200
    for start in range(20, len(rows), CHUNK):
        response = client.post("/predict/batch", json={"records": rows[start : start + CHUNK]})
        assert response.status_code == 200


def drift_now(client) -> dict[str, float]:
    """Each feature's PSI after the service computed it, with `prediction` and `rows`."""
    service = client.app.state.service
    client.portal.call(service.publish_drift)
    samples = metric_samples(client)
    found = {
        dict(labels)["feature"]: value
        for (name, labels), value in samples.items()
        if name == "feature_drift_psi"
    }
    found["prediction"] = metric(samples, "prediction_drift_psi")
    found["rows"] = metric(samples, "drift_window_rows")
    return found


def shifted(registry, rows):
    """Everyone 25 years older, within the contract."""
    oldest = registry.features["numeric"]["age"]["max"]
    return [row | {"age": min(row["age"] + 25, oldest)} for row in rows]


def features_of(registry) -> set[str]:
    return set(registry.features["numeric"]) | set(registry.features["categorical"])


def test_rows_of_the_test_split_show_no_drift(api_registry):
    with serving(drift_settings(api_registry)) as client:
        before = drift_now(client)
        assert before["rows"] == 0
        assert set(before) - {"prediction", "rows"} == features_of(api_registry)
        assert all(math.isnan(value) for name, value in before.items() if name != "rows")

        send(client, api_registry.rows())
        found = drift_now(client)
    assert WINDOW_ROWS - WINDOW_ROWS / BUCKETS <= found["rows"] <= WINDOW_ROWS
    features = {name: value for name, value in found.items() if name not in ("prediction", "rows")}
    assert set(features) == features_of(api_registry)
    assert max(features.values()) < 0.1, features
    # Against the predictions on the same split, logged with the model as its prediction reference.
    assert found["prediction"] < 0.1


def test_a_shifted_feature_drifts_and_the_others_do_not(api_registry):
    with serving(drift_settings(api_registry)) as client:
        send(client, shifted(api_registry, api_registry.rows()))
        found = drift_now(client)
    assert found["age"] > 0.25
    others = {name: value for name, value in found.items() if name not in ("age", "prediction", "rows")}
    assert max(others.values()) < 0.1, others


def test_the_sliding_window_forgets_a_shift_that_has_passed(api_registry):
    with serving(drift_settings(api_registry)) as client:
        send(client, shifted(api_registry, api_registry.rows()))
        assert drift_now(client)["age"] > 0.25
        send(client, api_registry.rows())
        found = drift_now(client)
    assert found["age"] < 0.1
    assert found["rows"] <= WINDOW_ROWS


def test_a_swapped_in_model_starts_a_fresh_window(own_registry):
    with serving(drift_settings(own_registry)) as client:
        send(client, shifted(own_registry, own_registry.rows()))
        assert drift_now(client)["age"] > 0.25
        own_registry.set_alias("production", own_registry.challenger)
        wait_until(lambda: client.get("/model").json()["version"] == own_registry.challenger, what="reload")
        found = drift_now(client)
        assert found["rows"] == 0
        assert math.isnan(found["age"])
        send(client, own_registry.rows())
        found = drift_now(client)
    assert found["age"] < 0.1


def test_thresholds_floors_and_test_metrics_come_from_the_version_s_tags(own_registry):
    tags = own_registry.tags(own_registry.production)
    monitoring = json.loads(tags[MONITORING_TAG])
    with serving(drift_settings(own_registry)) as client:
        samples = metric_samples(client)
        assert (
            metric(samples, "feature_drift_psi_threshold", level="warning") == monitoring["drift"]["warning"]
        )
        assert metric(samples, "feature_drift_psi_threshold", level="alert") == monitoring["drift"]["alert"]
        assert metric(samples, "drift_min_window_rows") == monitoring["drift"]["min_window_rows"]
        for name, floor in monitoring["quality_floors"].items():
            assert metric(samples, "model_quality_floor", metric=name) == floor
        assert metric(samples, "model_test_metric", metric="roc_auc") == float(tags["metric.roc_auc"])

        # Another version's tags, other figures: nothing is written in the service.
        changed = {**monitoring, "drift": {"warning": 0.15, "alert": 0.4, "min_window_rows": 50}}
        changed["quality_floors"] = {"roc_auc": 0.5}
        source = (
            own_registry.client().get_model_version(own_registry.model_name, own_registry.production).source
        )
        version = own_registry.add_version(
            source, {**tags, MONITORING_TAG: json.dumps(changed), "metric.roc_auc": "0.75"}
        )
        own_registry.set_alias("production", version)
        wait_until(lambda: client.get("/model").json()["version"] == version, what="reload")
        samples = metric_samples(client)
    assert metric(samples, "feature_drift_psi_threshold", level="warning") == 0.15
    assert metric(samples, "feature_drift_psi_threshold", level="alert") == 0.4
    assert metric(samples, "drift_min_window_rows") == 50
    floors = {dict(labels)["metric"] for name, labels in samples if name == "model_quality_floor"}
    assert floors == {"roc_auc"}
    assert metric(samples, "model_quality_floor", metric="roc_auc") == 0.5
    assert metric(samples, "model_test_metric", metric="roc_auc") == 0.75


def test_a_malformed_monitoring_tag_exports_no_thresholds_and_the_model_still_serves(own_registry):
    tags = own_registry.tags(own_registry.production)
    source = own_registry.client().get_model_version(own_registry.model_name, own_registry.production).source
    version = own_registry.add_version(source, {**tags, MONITORING_TAG: "{not json" + "x" * 10_000})
    own_registry.set_alias("production", version)
    with serving(drift_settings(own_registry)) as client:
        assert client.get("/model").json()["version"] == version
        send(client, own_registry.rows())
        found = drift_now(client)
        samples = metric_samples(client)
    assert not [name for name, _ in samples if name in ("feature_drift_psi_threshold", "model_quality_floor")]
    assert math.isnan(found["prediction"])  # no prediction reference to compare against
    assert math.isnan(metric(samples, "drift_min_window_rows"))
    assert found["rows"] > 0 and found["age"] < 0.1


def test_drift_monitoring_off_exports_none_of_it(api_registry):
    with serving(drift_settings(api_registry, drift_monitoring=False)) as client:
        send(client, api_registry.rows(100))
        assert client.app.state.service.publish_drift() is None
        samples = metric_samples(client)
    exported = {name for name, _ in samples}
    assert not exported & set(DRIFT_SERIES)
    # The model's own figures are not drift: the online quality panels compare against them.
    assert metric(samples, "model_test_metric", metric="roc_auc") > 0


def test_labelled_counters_start_at_zero_for_every_feature(api_registry):
    with serving(api_registry.settings()) as client:
        samples = metric_samples(client)
    unknown = {
        dict(labels)["feature"]: value
        for (name, labels), value in samples.items()
        if name == "unknown_category_total"
    }
    assert unknown == dict.fromkeys(api_registry.features["categorical"], 0.0)
    rejected = {
        dict(labels)["field"]: value
        for (name, labels), value in samples.items()
        if name == "request_validation_errors_total"
    }
    assert set(rejected) >= features_of(api_registry)
    assert set(rejected.values()) == {0.0}


def test_counting_off_the_one_hot_matrix_counts_what_the_lookups_count(api_registry):
    """The service reads a batch's categories off the fast predictor's matrix; the lookups are the
    reference. Rows with missing values and categories training never saw, in batches that straddle
    sub-windows."""
    settings = api_registry.settings()
    model = load_registered(settings, resolve_alias(settings))
    predictor = model.predictor
    assert isinstance(predictor, FastPredictor)
    metadata = model.feature_metadata
    rows = api_registry.rows()
    for name, meta in metadata["categorical"].items():
        unseen = sorted(set(meta["allowed"]) - set(meta["categories"]))
        rows += [row | {name: unseen[0]} for row in rows[:7]] if unseen else []
        rows += [row | {name: None} for row in rows[:5]] if meta["nullable"] else []
    assert any(sorted(set(m["allowed"]) - set(m["categories"])) for m in metadata["categorical"].values())
    # Enough rows to fill the 700-row window and wrap it, whatever the test split's size (since the stable
    # split, the session's sample gives fewer than 700).
    rows = rows * (1 + 800 // len(rows))
    bins = feature_bins(metadata)
    by_lookup, by_matrix = DriftMonitor(bins, None, 700, 7), DriftMonitor(bins, None, 700, 7)
    by_matrix.read_one_hot(predictor.one_hot_positions, predictor.width)
    assert by_matrix.reads_one_hot and not by_lookup.reads_one_hot
    for start in range(0, len(rows), 150):
        columns = columns_of(rows[start : start + 150], model.requests.columns.order)
        prepared, unknown = predictor.prepare(columns)
        probabilities = predictor.score(prepared)
        by_lookup.count_batch(columns, probabilities)
        by_matrix.count_batch(columns, probabilities, prepared, unknown)
        np.testing.assert_array_equal(by_matrix.window(), by_lookup.window())
    assert by_matrix.rows == by_lookup.rows > 600
