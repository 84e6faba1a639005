"""POST /feedback: labels joined to their predictions by request id, refused when they are no label of
the model, counted once per prediction, logged, and turned into online metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from api.access import key_hash
from api.feedback import PredictionIndex
from api.online_metrics import figures
from api.settings import Settings
from tests.api.support import metric, metric_samples, negative_and_positive, read_log, serving, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def log_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def client(api_registry, log_root):
    settings = api_registry.settings(
        inference_log_dir=log_root, inference_log_flush_seconds=0.05, drift_interval_seconds=0.05
    )
    with serving(settings) as client:
        yield client


@pytest.fixture
def labels(api_registry):
    return negative_and_positive(api_registry.features)


def predict(client, rows, prefix: str) -> list[dict]:
    answers = []
    for index, row in enumerate(rows):
        response = client.post("/predict", json=row, headers={"X-Request-ID": f"{prefix}-{index}"})
        assert response.status_code == 200
        answers.append(response.json())
    return answers


def test_feedback_joins_counts_unknowns_and_keeps_the_first_label(client, api_registry, labels, log_root):
    answers = predict(client, api_registry.rows(3), "join")
    negative, positive = labels
    items = [{"request_id": answer["request_id"], "label": positive} for answer in answers]
    before = metric_samples(client)
    response = client.post("/feedback", json=[*items, {"request_id": "never-predicted", "label": negative}])
    assert response.status_code == 200
    assert response.json() == {
        "matched": 3,
        "unknown": 0,
        "duplicate": 0,
        "pending": 1,  # with an inference log, an id the index lacks waits for it there first
        "request_id": response.json()["request_id"],
    }
    again = client.post("/feedback", json={"request_id": answers[0]["request_id"], "label": negative})
    assert {key: again.json()[key] for key in ("matched", "unknown", "duplicate")} == {
        "matched": 0, "unknown": 0, "duplicate": 1,
    }  # fmt: skip
    wait_until(
        lambda: (
            metric(metric_samples(client), "feedback_total", result="unknown")
            - metric(before, "feedback_total", result="unknown")
            == 1
        ),
        timeout=30,
        what="the pending item's wait to run out",
    )
    after = metric_samples(client)
    for result, count in (("matched", 3), ("unknown", 1), ("duplicate", 1)):
        assert (
            metric(after, "feedback_total", result=result) - metric(before, "feedback_total", result=result)
            == count
        )

    # Every item is in the feedback log, matched or not, with its label and how it joined.
    def logged() -> pd.DataFrame:
        return read_log(log_root / "feedback")

    wanted = {answer["request_id"] for answer in answers} | {"never-predicted"}
    wait_until(lambda: wanted <= set(logged().get("request_id", [])), timeout=30, what="the feedback log")
    first = logged().set_index("request_id")
    assert first.loc["never-predicted", "result"] == "pending"  # its result when it arrived
    assert set(first.loc[answers[0]["request_id"], "result"]) == {"matched", "duplicate"}
    assert set(first.loc[answers[0]["request_id"], "label"]) == {positive, negative}


def test_batch_records_are_joined_by_their_own_ids(client, api_registry, labels):
    rows = api_registry.rows(4)
    batch = client.post("/predict/batch", json={"records": rows}, headers={"X-Request-ID": "fb-batch"}).json()
    items = [{"request_id": f"fb-batch-{i}", "label": labels[0]} for i in (0, 3)]
    items.append({"request_id": "fb-batch-4", "label": labels[0]})  # past its end
    items.append({"request_id": "fb-batch-03", "label": labels[0]})  # not an id the batch gave
    answer = client.post("/feedback", json=items).json()
    assert (answer["matched"], answer["pending"]) == (2, 2)  # the log might hold the other two
    assert [item["request_id"] for item in batch["predictions"]][3] == "fb-batch-3"


def test_every_id_an_answer_names_can_be_sent_back(client, api_registry, labels):
    """A 128-character X-Request-ID is taken; its batch records' ids are longer, and still feedback's."""
    request_id = "r" * 128
    batch = client.post(
        "/predict/batch", json={"records": api_registry.rows(12)}, headers={"X-Request-ID": request_id}
    ).json()
    assert batch["request_id"] == request_id
    items = [{"request_id": item["request_id"], "label": labels[0]} for item in batch["predictions"]]
    assert len(items[11]["request_id"]) == 131
    answer = client.post("/feedback", json=items).json()
    assert answer["matched"] == 12, answer
    for refused in ("r" * 129, "r" * 128 + "-x", "r" * 128 + "-12345678901"):
        response = client.post("/feedback", json={"request_id": refused, "label": labels[0]})
        assert response.status_code == 422, refused


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "x-1", "label": "no such label"},
        {"request_id": "x-1"},
        {"request_id": "x-1", "label": None},
        {"request_id": "x 1", "label": "LABEL"},
        {"request_id": "x-1", "label": "LABEL", "extra": 1},
        [],
        [{"request_id": "x-1", "label": "LABEL"}] * 1001,
    ],
)
def test_a_bad_item_is_a_422_with_field_detail(client, labels, body):
    text = json.dumps(body).replace('"LABEL"', json.dumps(labels[1]))
    response = client.post("/feedback", content=text, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert set(answer) == {"detail", "errors_omitted", "request_id"}
    assert answer["detail"] and all(issue["loc"][0] == "body" for issue in answer["detail"])


def test_a_label_of_another_json_type_is_refused(client, labels):
    # The labels' own JSON type only: a string label sent as a number, or a number as a string, is wrong.
    other = 1 if isinstance(labels[1], str) else str(labels[1])
    response = client.post("/feedback", json={"request_id": "x-1", "label": other})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "label"]


def test_many_unknown_keys_are_bounded(client, labels):
    item = {"request_id": "x-1", "label": labels[1], **{f"k{i}": i for i in range(5000)}}
    response = client.post("/feedback", json=item)
    assert response.status_code == 422
    assert len(response.json()["detail"]) == 20 and response.json()["errors_omitted"] == 5000 - 20


def test_feedback_without_a_json_content_type_is_a_415(client):
    response = client.post(
        "/feedback", content=b'{"request_id": "x", "label": 1}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.headers["X-Request-ID"] == response.json()["request_id"]


def test_feedback_api_keys_file_restricts_feedback_to_its_own_keys(api_registry, tmp_path, labels):
    (tmp_path / "keys.txt").write_text(key_hash("predict-key") + "\n")
    (tmp_path / "feedback-keys.txt").write_text(key_hash("feedback-key") + "\n")
    settings = api_registry.settings(
        api_keys_file=tmp_path / "keys.txt", feedback_api_keys_file=tmp_path / "feedback-keys.txt"
    )
    item = {"request_id": "x-1", "label": labels[1]}
    with serving(settings) as client:
        as_predictor = {"Authorization": "Bearer predict-key"}
        as_labeller = {"Authorization": "Bearer feedback-key"}
        assert client.post("/feedback", json=item, headers=as_predictor).status_code == 401
        assert client.post("/feedback", json=item, headers=as_labeller).status_code == 200
        assert client.post("/predict", json=api_registry.rows(1)[0], headers=as_labeller).status_code == 401
    with serving(api_registry.settings(api_keys_file=tmp_path / "keys.txt")) as client:
        assert client.post("/feedback", json=item).status_code == 401
        assert (
            client.post("/feedback", json=item, headers={"Authorization": "Bearer predict-key"}).status_code
            == 200
        )


def test_the_index_evicts_the_oldest_ids_first():
    index = PredictionIndex(size=5)
    index.add("a", 0.1)
    index.add_batch("b", np.array([0.2, 0.3, 0.4]))
    index.add("c", 0.5)
    assert len(index) == 5 and index.probability("a") == 0.1 and index.probability("b-2") == 0.4
    index.add("d", 0.6)  # one over: "a" goes
    assert index.probability("a") is None and index.probability("b-0") == 0.2
    index.add("e", 0.7)  # the batch is evicted whole
    assert index.probability("b-0") is None and len(index) == 3
    assert [index.probability(key) for key in "cde"] == [0.5, 0.6, 0.7]


def test_an_evicted_prediction_is_unknown_to_feedback(api_registry, labels):
    with serving(api_registry.settings(feedback_index_size=3)) as client:
        answers = predict(client, api_registry.rows(5), "evict")
        items = [{"request_id": answer["request_id"], "label": labels[0]} for answer in answers]
        answer = client.post("/feedback", json=items).json()
    assert (answer["matched"], answer["unknown"]) == (3, 2)


def test_online_metrics_match_sklearn_on_the_same_items(api_registry, labels):
    negative, positive = labels
    rows = api_registry.rows(300)
    truth = [positive if flag else negative for flag in api_registry.test_frame.index[:300] % 3 == 0]
    # The true labels of the test split are not in the rows sent; any fixed labelling checks the maths.
    settings = api_registry.settings(drift_interval_seconds=0.05, online_metrics_window=250)
    with serving(settings) as client:
        answers = predict(client, rows, "online")
        items = [{"request_id": a["request_id"], "label": t} for a, t in zip(answers, truth, strict=True)]
        assert client.post("/feedback", json=items).json()["matched"] == 300
        wait_until(
            lambda: metric(metric_samples(client), "model_online_samples") == 250,
            timeout=30,
            what="the window",
        )
        samples = metric_samples(client)
    kept = slice(50, 300)  # the window holds the last 250
    probabilities = np.array([a["probability"] for a in answers])[kept]
    y_true = np.array([label == positive for label in truth])[kept]
    y_pred = np.array([a["label"] == positive for a in answers])[kept]
    assert metric(samples, "model_online_accuracy") == pytest.approx(
        accuracy_score(y_true, y_pred), abs=1e-12
    )
    assert metric(samples, "model_online_log_loss") == pytest.approx(
        log_loss(y_true, probabilities), rel=1e-9
    )
    assert metric(samples, "model_online_roc_auc") == pytest.approx(
        roc_auc_score(y_true, probabilities), rel=1e-9
    )


def test_the_online_figures_match_sklearn_with_ties_and_extremes():
    rng = np.random.default_rng(7)
    probabilities = np.round(rng.random(2000), 2)  # many ties
    probabilities[:3] = [0.0, 1.0, 1e-300]
    truth = rng.random(2000) < probabilities
    result = figures(probabilities, truth, threshold=0.4)
    assert result.samples == 2000
    assert result.accuracy == pytest.approx(accuracy_score(truth, probabilities > 0.4), abs=1e-12)
    assert result.log_loss == pytest.approx(log_loss(truth, probabilities), rel=1e-9)
    assert result.roc_auc == pytest.approx(roc_auc_score(truth, probabilities), rel=1e-9)
    assert np.isnan(figures(probabilities[:5], np.ones(5, dtype=bool), 0.5).roc_auc)


def test_online_gauges_and_feedback_counters_start_defined(api_registry):
    with serving(api_registry.settings()) as client:
        samples = metric_samples(client)
    for result in ("matched", "unknown", "duplicate"):
        assert ("feedback_total", frozenset({("result", result)})) in samples
    assert samples[("model_online_samples", frozenset())] == 0


def test_the_feedback_log_defaults_to_a_directory_of_the_inference_log():
    assert Settings(model_uri="m", inference_log_dir="/logs").feedback_log == "/logs/feedback"
    assert Settings(model_uri="m", inference_log_dir="/logs", feedback_log_dir="/fb").feedback_log == "/fb"
    assert Settings(model_uri="m", inference_log_dir="s3://b/logs/").feedback_log == "s3://b/logs/feedback"
    assert (
        Settings(model_uri="m", inference_log_dir="s3://b/logs?region=eu-west-1").feedback_log
        == "s3://b/logs/feedback?region=eu-west-1"
    )
    assert Settings(model_uri="m", inference_log_dir="").feedback_log is None  # `INFERENCE_LOG_DIR=`: off
