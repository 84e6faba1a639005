"""The batch body is written without a dict per row: it must be byte for byte what to_json writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic_core import to_json

from api.responses import BatchPredictionResponse, batch_body


def _reference(name, version, labels, probabilities, positive) -> bytes:
    predictions = [
        {"label": labels[int(flag)], "probability": probability}
        for probability, flag in zip(probabilities.tolist(), positive.tolist(), strict=True)
    ]
    return to_json({"model_name": name, "model_version": version, "predictions": predictions})


@pytest.mark.parametrize(
    ("labels", "version"),
    [((">50K", "<=50K"), "7"), (('say "no"', "oui, ça"), None), (("0", "1"), "12")],
)
@pytest.mark.parametrize("size", [1, 2, 1000])
def test_the_batch_body_is_what_to_json_writes(labels, version, size):
    rng = np.random.default_rng(size)
    probabilities = rng.random(size)
    probabilities[: min(size, 4)] = [0.0, 1.0, 1e-20, 0.5][: min(size, 4)]
    positive = probabilities > 0.5
    body = batch_body("adult-income", version, labels, probabilities, positive)
    assert body == _reference("adult-income", version, labels, probabilities, positive)
    parsed = BatchPredictionResponse.model_validate_json(body)
    assert [item.label for item in parsed.predictions] == [labels[int(flag)] for flag in positive]
    assert [item.probability for item in parsed.predictions] == probabilities.tolist()


def test_an_empty_batch_body_is_valid_json():
    body = batch_body("m", "1", ("a", "b"), np.array([]), np.array([], dtype=bool))
    assert json.loads(body) == {"model_name": "m", "model_version": "1", "predictions": []}
