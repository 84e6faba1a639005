"""The batch body is written without a dict per row: it must be byte for byte what to_json writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic_core import to_json

from api.responses import BatchPredictionResponse, batch_body


def _reference(request_id, name, version, labels, probabilities, positive) -> bytes:
    predictions = [
        {"request_id": f"{request_id}-{index}", "label": labels[int(flag)], "probability": probability}
        for index, (probability, flag) in enumerate(
            zip(probabilities.tolist(), positive.tolist(), strict=True)
        )
    ]
    body = {
        "request_id": request_id,
        "model_name": name,
        "model_version": version,
        "predictions": predictions,
    }
    return to_json(body)


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
    request_id = "0b7c2f8e-4a1d-4c6e-9f3a-2d5e8b1c7a90"
    body = batch_body(request_id, "adult-income", version, labels, probabilities, positive)
    assert body == _reference(request_id, "adult-income", version, labels, probabilities, positive)
    parsed = BatchPredictionResponse.model_validate_json(body)
    assert parsed.request_id == request_id
    assert [item.request_id for item in parsed.predictions] == [f"{request_id}-{i}" for i in range(size)]
    assert [item.label for item in parsed.predictions] == [labels[int(flag)] for flag in positive]
    assert [item.probability for item in parsed.predictions] == probabilities.tolist()


def test_an_empty_batch_body_is_valid_json():
    body = batch_body("r-1", "m", "1", ("a", "b"), np.array([]), np.array([], dtype=bool))
    assert json.loads(body) == {
        "request_id": "r-1",
        "model_name": "m",
        "model_version": "1",
        "predictions": [],
    }


def test_a_batch_after_a_larger_one_numbers_its_records_from_zero():
    batch_body("big", "m", "1", ("a", "b"), np.full(5, 0.7), np.ones(5, dtype=bool))
    body = json.loads(batch_body("small", "m", "1", ("a", "b"), np.full(2, 0.2), np.zeros(2, dtype=bool)))
    assert [item["request_id"] for item in body["predictions"]] == ["small-0", "small-1"]
