"""The served label: the model's positive label when P(positive label) > its decision threshold, the other
label otherwise, whatever order the metadata lists the labels in; metadata that cannot say which label is
positive, or with a threshold outside (0, 1), is refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.loading import ModelCheckFailed, load_local
from tests.api.support import metric, metric_samples, negative_and_positive, serving

pytestmark = pytest.mark.slow

ROWS = 200


def changed_model(registry, dest: Path, **changes: Any) -> Path:
    """A copy of the production model whose logged feature metadata has `changes` applied."""
    shutil.copytree(registry.model_dir(registry.production), dest)
    mlmodel = yaml.safe_load((dest / "MLmodel").read_text())
    mlmodel["metadata"]["feature_metadata"].update(changes)
    (dest / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return dest


def served(client, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every answer for `rows`, through /predict one by one and through one /predict/batch."""
    single = [client.post("/predict", json=row) for row in rows]
    assert {answer.status_code for answer in single} == {200}
    batch = client.post("/predict/batch", json={"records": rows})
    assert batch.status_code == 200, batch.text
    return [answer.json() for answer in single] + batch.json()["predictions"]


def assert_labels_follow(
    answers: list[dict[str, Any]], positive: str, negative: str, threshold: float
) -> None:
    for answer in answers:
        expected = positive if answer["probability"] > threshold else negative
        assert answer["label"] == expected, (answer, threshold)


def test_labels_listed_positive_first_are_served_by_probability(api_registry, tmp_path):
    negative, positive = negative_and_positive(api_registry.metadata(api_registry.production))
    model_dir = changed_model(api_registry, tmp_path / "positive-first", labels=[positive, negative])
    with serving(api_registry.settings(model_uri=str(model_dir))) as client:
        answers = served(client, api_registry.rows(ROWS))
        assert_labels_follow(answers, positive, negative, 0.5)
        assert {answer["label"] for answer in answers} == {positive, negative}
        positives = sum(1 for answer in answers if answer["probability"] > 0.5)
        samples = metric_samples(client)
        assert metric(samples, "predictions_total", label=positive) == positives
        assert metric(samples, "predictions_total", label=negative) == len(answers) - positives


def test_the_decision_threshold_logged_with_the_model_decides_the_label(api_registry, tmp_path):
    negative, positive = negative_and_positive(api_registry.metadata(api_registry.production))
    threshold = 0.3
    model_dir = changed_model(api_registry, tmp_path / "threshold", decision_threshold=threshold)
    with serving(api_registry.settings(model_uri=str(model_dir))) as client:
        answers = served(client, api_registry.rows(ROWS))
        assert_labels_follow(answers, positive, negative, threshold)
        moved = [answer for answer in answers if threshold < answer["probability"] <= 0.5]
        assert moved, "no probability between the threshold and 0.5: the test shows nothing"
        assert {answer["label"] for answer in moved} == {positive}
        card = client.get("/model").json()
        assert (card["positive_label"], card["decision_threshold"]) == (positive, threshold)


def test_a_model_logged_without_a_threshold_uses_one_half(api_registry, tmp_path):
    """Models registered before the threshold travelled with the metadata."""
    model_dir = changed_model(api_registry, tmp_path / "no-threshold")
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    del mlmodel["metadata"]["feature_metadata"]["decision_threshold"]
    (model_dir / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with serving(api_registry.settings(model_uri=str(model_dir))) as client:
        assert client.get("/model").json()["decision_threshold"] == 0.5


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"positive_label": "rich"}, "positive label"),
        ({"labels": [">50K", ">50K"]}, "two different labels"),
        ({"labels": ["<=50K", ">50K", "?"]}, "two different labels"),
        ({"decision_threshold": 0.0}, "threshold"),
        ({"decision_threshold": 1.0}, "threshold"),
        ({"decision_threshold": 1.5}, "threshold"),
        ({"decision_threshold": "high"}, "threshold"),
    ],
    ids=["unknown positive", "one label twice", "three labels", "zero", "one", "above one", "not a number"],
)
def test_labels_or_a_threshold_that_cannot_decide_are_refused(api_registry, tmp_path, changes, reason):
    model_dir = changed_model(api_registry, tmp_path / "refused", **changes)
    with pytest.raises(ModelCheckFailed, match=reason):
        load_local(api_registry.settings(model_uri=str(model_dir)))
