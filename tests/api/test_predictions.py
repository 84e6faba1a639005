"""Parity: the service answers what the logged model answers, for every route through the fast path."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from tests.api.support import CHALLENGER_ALIAS, PARITY_TOLERANCE, negative_and_positive, serving

pytestmark = pytest.mark.slow

FAST_PREDICTORS = {"xgboost": "fast-xgboost", "logreg": "fast-linear"}
PARITY_ROWS = 500


@pytest.fixture(scope="module", params=["production", CHALLENGER_ALIAS])
def served(request, api_registry):
    """The service on each trained family in turn: the chosen one (production) and the other one."""
    version = api_registry.production if request.param == "production" else api_registry.challenger
    with serving(api_registry.settings(model_alias=request.param)) as client:
        yield client, version


def labels_for(api_registry, probabilities: np.ndarray) -> list[str]:
    negative, positive = negative_and_positive(api_registry.features)
    return [positive if probability > 0.5 else negative for probability in probabilities]


def test_the_test_split_is_large_enough(api_registry):
    assert len(api_registry.test_frame) >= PARITY_ROWS


def test_predict_matches_the_logged_model_row_by_row(served, api_registry):
    client, version = served
    rows = api_registry.rows()
    expected = api_registry.expected(version)
    answers = [client.post("/predict", json=row) for row in rows]
    assert {answer.status_code for answer in answers} == {200}
    probabilities = np.array([answer.json()["probability"] for answer in answers])
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=PARITY_TOLERANCE)
    assert [answer.json()["label"] for answer in answers] == labels_for(api_registry, expected)
    pipeline_labels = api_registry.pipeline(version).predict(api_registry.test_frame)
    negative, positive = negative_and_positive(api_registry.features)
    assert [answer.json()["label"] for answer in answers] == [
        positive if y else negative for y in pipeline_labels
    ]


@pytest.mark.parametrize("batch_size", [1000, 7, 1], ids=["one batch", "batches of 7", "batches of 1"])
def test_batches_match_the_logged_model_in_order(served, api_registry, batch_size):
    client, version = served
    rows = api_registry.rows()
    expected = api_registry.expected(version)
    predictions = []
    for start in range(0, len(rows), batch_size):
        response = client.post("/predict/batch", json={"records": rows[start : start + batch_size]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model_name"], body["model_version"]) == (api_registry.model_name, version)
        predictions.extend(body["predictions"])
    assert len(predictions) == len(rows)
    probabilities = np.array([item["probability"] for item in predictions])
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=PARITY_TOLERANCE)
    assert [item["label"] for item in predictions] == labels_for(api_registry, expected)


def test_predict_names_the_model_and_version(served, api_registry):
    client, version = served
    body = client.post("/predict", json=api_registry.rows(1)[0]).json()
    assert (body["model_name"], body["model_version"]) == (api_registry.model_name, version)
    assert body["label"] in api_registry.features["labels"]
    assert 0.0 <= body["probability"] <= 1.0


def test_model_card_reports_lineage_metrics_and_the_fast_path(served, api_registry):
    client, version = served
    card = client.get("/model").json()
    registered = api_registry.client().get_model_version(api_registry.model_name, version)
    assert card["name"] == api_registry.model_name and card["version"] == version
    assert card["run_id"] == registered.run_id
    assert card["git_sha"] == registered.tags["git_sha"] and card["data_hash"] == registered.tags["data_hash"]
    assert card["metrics"]["roc_auc"] == float(registered.tags["metric.roc_auc"])
    assert datetime.fromisoformat(card["loaded_at"]).tzinfo is not None
    assert card["predictor"] == FAST_PREDICTORS[api_registry.families[version]]
    assert card["fallback_reason"] is None
