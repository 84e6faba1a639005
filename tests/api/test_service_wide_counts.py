"""The counts each worker exports so that Prometheus can compute drift and online quality for the whole
service (monitoring/prometheus/rules/drift.yml and feedback.yml): a PSI or an AUC per worker cannot be
combined, their counts can. Two apps in one process stand for two workers or pods; the rules' arithmetic
on the sums is tested with promtool (monitoring/prometheus/tests/)."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from api.drift import PROPORTION_FLOOR, feature_psi, probability_index, probability_labels
from api.online_metrics import SCORE_BINS, binned_roc_auc, score_bin, score_bin_labels
from tests.api.support import metric, metric_samples, negative_and_positive, serving

pytestmark = pytest.mark.slow


def settings_of(registry):
    # An hour between background runs: the tests publish when they choose.
    return registry.settings(drift_interval_seconds=3600)


def predict(client, rows, prefix: str) -> list[dict]:
    answers = []
    for index, row in enumerate(rows[:30]):  # the single-record path, then batches
        response = client.post("/predict", json=row, headers={"X-Request-ID": f"{prefix}-{index}"})
        assert response.status_code == 200
        answers.append(response.json())
    for start in range(30, len(rows), 100):
        response = client.post("/predict/batch", json={"records": rows[start : start + 100]})
        assert response.status_code == 200
        answers.extend(response.json()["predictions"])
    return answers


def publish(client) -> None:
    state = client.app.state
    client.portal.call(state.service.publish_drift)
    client.portal.call(state.feedback.online.publish)


def summed(clients, name: str) -> dict[frozenset, float]:
    """A counter or gauge family's samples by labels, summed over the apps, as Prometheus' sum() would."""
    total: dict[frozenset, float] = defaultdict(float)
    for client in clients:
        for (sample, labels), value in metric_samples(client).items():
            if sample == name:
                total[labels] += value
    return total


def test_two_workers_counts_add_up_to_the_psi_of_all_their_rows(api_registry):
    rows = api_registry.rows()
    oldest = api_registry.features["numeric"]["age"]["max"]
    # The second worker sees the population shifted: neither worker's own figures are the whole's.
    halves = [rows[::2], [row | {"age": min(row["age"] + 25, oldest)} for row in rows[1::2]]]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(serving(settings_of(api_registry))) for _ in halves]
        answers = [predict(client, half, f"w{index}") for index, (client, half) in enumerate(zip(clients, halves, strict=True))]  # fmt: skip
        for client in clients:
            publish(client)
        model = clients[0].app.state.service.model
        counts = summed(clients, "feature_drift_bin_rows_total")
        references = {
            labels: value for labels, value in metric_samples(clients[0]).items()
            if labels[0] == "feature_drift_reference_proportion"
        }  # fmt: skip
        predictions = summed(clients, "prediction_drift_bin_rows_total")
    version = model.registry.version
    every = [row for half in halves for row in half]
    expected = feature_psi(model.feature_metadata, {name: [row[name] for row in every] for name in every[0]})

    by_feature: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for (_, labels), share in references.items():
        found = dict(labels)
        assert found["model_version"] == version
        key = frozenset({"model_version": version, "feature": found["feature"], "bin": found["bin"]}.items())
        by_feature[found["feature"]][found["bin"]] = (share, counts[key])
    assert set(by_feature) == set(expected)
    for feature, bins in by_feature.items():
        shares = np.array([share for share, _ in bins.values()])
        rows_in = np.array([count for _, count in bins.values()])
        assert rows_in.sum() == len(every), feature
        live = np.maximum(rows_in / rows_in.sum(), PROPORTION_FLOOR)
        reference = np.maximum(shares, PROPORTION_FLOOR)
        assert float(np.sum((live - reference) * np.log(live / reference))) == pytest.approx(
            expected[feature], abs=1e-9
        ), feature
    assert expected["age"] > 0.25

    probabilities = np.array([answer["probability"] for half in answers for answer in half])
    bincount = np.bincount(probability_index(probabilities), minlength=len(probability_labels()))
    assert [predictions[frozenset({"model_version": version, "bin": label}.items())] for label in probability_labels()] == bincount.tolist()  # fmt: skip


def test_two_workers_online_counts_give_the_online_figures_of_all_their_items(api_registry):
    negative, positive = negative_and_positive(api_registry.features)
    rows = api_registry.rows(400)
    truth = [positive if flag else negative for flag in api_registry.test_frame.index[:400] % 3 == 0]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(serving(settings_of(api_registry))) for _ in range(2)]
        answers = []
        for index, client in enumerate(clients):
            part = slice(index * 200, (index + 1) * 200)
            sent = predict(client, rows[part], f"w{index}")
            items = [
                {"request_id": a["request_id"], "label": t} for a, t in zip(sent, truth[part], strict=True)
            ]
            assert client.post("/feedback", json=items).json()["matched"] == 200
            answers.extend(sent)
            publish(client)
        scores = summed(clients, "model_online_scores_total")
        below = summed(clients, "model_online_scores_below_total")
        correct = sum(metric(metric_samples(client), "model_online_correct_total") for client in clients)
        loss = sum(metric(metric_samples(client), "model_online_loss_total") for client in clients)
    probabilities = np.array([answer["probability"] for answer in answers])
    y_true = np.array([label == positive for label in truth])
    y_pred = np.array([answer["label"] == positive for answer in answers])

    labels = score_bin_labels()
    table = np.array([[scores[frozenset({"actual": actual, "bin": b}.items())] for b in labels] for actual in ("negative", "positive")])  # fmt: skip
    assert table.sum() == 400
    expected = np.zeros((2, SCORE_BINS))
    for probability, actual in zip(probabilities, y_true, strict=True):
        expected[int(actual), score_bin(float(probability))] += 1
    assert table.tolist() == expected.tolist()
    # The cumulative counts the AUC rule reads: what the lower bins hold.
    for actual, name in enumerate(("negative", "positive")):
        lower = np.concatenate([[0], np.cumsum(expected[actual])[:-1]])
        assert [below[frozenset({"actual": name, "bin": b}.items())] for b in labels] == lower.tolist()

    assert correct / 400 == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert loss / 400 == pytest.approx(log_loss(y_true, probabilities), rel=1e-9)
    # Binned, ties within a bin count half: off the exact AUC by at most half the share of the
    # positive-negative pairs that share a bin.
    exact, binned = roc_auc_score(y_true, probabilities), binned_roc_auc(table)
    shared = float(np.sum(table[0] * table[1]) / (table[0].sum() * table[1].sum()))
    assert abs(binned - exact) <= shared / 2 + 1e-12
    assert not math.isnan(binned)


def test_a_stopping_worker_adds_what_it_counted_since_its_last_interval(api_registry):
    negative, _ = negative_and_positive(api_registry.features)
    rows = api_registry.rows(50)
    with serving(settings_of(api_registry)) as client:  # an hour between background runs
        answers = predict(client, rows, "stop")
        items = [{"request_id": answer["request_id"], "label": negative} for answer in answers]
        assert client.post("/feedback", json=items).json()["matched"] == 50
        telemetry = client.app.state.service.telemetry
    # Stopped: the lifespan's end added the last counts.
    counted = {
        name: sum(sample.value for family in telemetry.registry.collect() for sample in family.samples
                  if sample.name == name)
        for name in ("prediction_drift_bin_rows_total", "model_online_scores_total")
    }  # fmt: skip
    assert counted == {"prediction_drift_bin_rows_total": 50, "model_online_scores_total": 50}
