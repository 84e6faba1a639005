"""Bad input never causes a 500: each case gets a 4xx with field-level detail, counted by field."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests.api.support import PARITY_TOLERANCE, metric, metric_samples, serving

pytestmark = pytest.mark.slow

MAX_BATCH = 10
MAX_BODY = 32 * 1024


@pytest.fixture(scope="module")
def client(api_registry):
    settings = api_registry.settings(max_batch_size=MAX_BATCH, max_body_bytes=MAX_BODY)
    with serving(settings) as client:
        yield client


@pytest.fixture(scope="module")
def metadata(api_registry) -> dict[str, Any]:
    return api_registry.metadata(api_registry.production)


@pytest.fixture
def row(api_registry) -> dict[str, Any]:
    """A complete, valid record (a fresh copy per test)."""
    return next(dict(row) for row in api_registry.rows() if None not in row.values())


def first_numeric(metadata) -> str:
    return next(name for name in metadata["feature_order"] if name in metadata["numeric"])


def first_categorical(metadata, nullable: bool = False) -> str:
    return next(name for name, meta in metadata["categorical"].items() if meta["nullable"] == nullable)


def assert_rejected(response, loc: list[Any], error_type: str) -> None:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    matching = [item for item in detail if item["loc"] == loc]
    assert matching, f"no error at {loc}: {detail}"
    assert matching[0]["type"] == error_type, matching
    assert matching[0]["msg"]


# One bad field each: how the record is spoiled, the field the error names, the pydantic error type.
def _set(name_of, value):
    def spoil(row, metadata):
        name = name_of(metadata)
        row[name] = value
        return name

    return spoil


def _numeric_offset(delta: float, side: str):
    def spoil(row, metadata):
        name = first_numeric(metadata)
        row[name] = metadata["numeric"][name][side] + delta
        return name

    return spoil


def _missing(row, metadata):
    name = first_numeric(metadata)
    del row[name]
    return name


def _extra(row, metadata):
    row["favourite_colour"] = "blue"
    return "favourite_colour"


BAD_FIELDS = {
    "missing field": (_missing, "missing"),
    "extra field": (_extra, "extra_forbidden"),
    "text for a number": (_set(first_numeric, "forty"), "float_type"),
    "numeric text for a number": (_set(first_numeric, "42"), "float_type"),
    "boolean for a number": (_set(first_numeric, True), "float_type"),
    "null for a required number": (_set(first_numeric, None), "float_type"),
    "below the allowed range": (_numeric_offset(-1, "min"), "greater_than_equal"),
    "above the allowed range": (_numeric_offset(+1, "max"), "less_than_equal"),
    "a fraction for a whole number": (_numeric_offset(0.5, "min"), "multiple_of"),
    "a category outside the contract": (_set(first_categorical, "Astronaut"), "literal_error"),
    "a number for a category": (_set(first_categorical, 3), "literal_error"),
    "null for a required category": (_set(first_categorical, None), "literal_error"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_a_bad_field_is_a_422_naming_it(client, row, metadata, case):
    spoil, error_type = BAD_FIELDS[case]
    valid = dict(row)
    name = spoil(row, metadata)
    label = name if name in metadata["feature_order"] else "__extra__"
    before = metric(metric_samples(client), "request_validation_errors_total", field=label)
    assert_rejected(client.post("/predict", json=row), ["body", name], error_type)
    # In a batch, the error points at the bad record's position and the good one is not blamed.
    response = client.post("/predict/batch", json={"records": [valid, row]})
    assert_rejected(response, ["body", "records", 1, name], error_type)
    assert [item for item in response.json()["detail"] if item["loc"][:3] == ["body", "records", 0]] == []
    after = metric(metric_samples(client), "request_validation_errors_total", field=label)
    assert after - before == 2


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400"]


@pytest.mark.parametrize("token", NON_FINITE)
def test_nan_and_infinity_are_rejected(client, row, metadata, token):
    name = first_numeric(metadata)
    row[name] = 0  # placeholder, replaced in the raw JSON text
    body = json.dumps(row).replace(f'"{name}": 0', f'"{name}": {token}')
    assert token in body
    response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert_rejected(response, ["body", name], "finite_number")


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (b'{"age": 42,', "json_invalid"),
        (b"", "json_invalid"),
        (b"not json at all", "json_invalid"),
        (b"[]", "model_type"),
        (b'"a string"', "model_type"),
        (b"null", "model_type"),
    ],
    ids=["truncated", "empty", "not json", "an array", "a string", "null"],
)
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_malformed_body_is_a_422(client, path, body, error_type):
    before = metric(metric_samples(client), "request_validation_errors_total", field="body")
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_rejected(response, ["body"], error_type)
    assert metric(metric_samples(client), "request_validation_errors_total", field="body") == before + 1


def test_a_batch_over_the_limit_is_a_clear_422(client, row):
    before = metric(metric_samples(client), "request_validation_errors_total", field="records")
    response = client.post("/predict/batch", json={"records": [row] * (MAX_BATCH + 1)})
    assert_rejected(response, ["body", "records"], "too_long")
    message = response.json()["detail"][0]["msg"]
    assert str(MAX_BATCH) in message and str(MAX_BATCH + 1) in message
    assert metric(metric_samples(client), "request_validation_errors_total", field="records") == before + 1
    assert client.post("/predict/batch", json={"records": [row] * MAX_BATCH}).status_code == 200


def test_an_empty_batch_is_a_422(client):
    assert_rejected(client.post("/predict/batch", json={"records": []}), ["body", "records"], "too_short")
    assert_rejected(client.post("/predict/batch", json={}), ["body", "records"], "missing")


def oversized(row: dict[str, Any]) -> bytes:
    body = json.dumps({"records": [row] * 400}).encode()
    assert len(body) > MAX_BODY
    return body


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_a_body_over_the_size_limit_is_a_413(client, row, path):
    response = client.post(path, content=oversized(row), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert str(MAX_BODY) in response.json()["detail"]


def test_the_size_limit_holds_without_a_content_length(client, row):
    body = oversized(row)

    def chunks():  # a generator body is sent chunked, with no Content-Length to check up front
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = client.post("/predict/batch", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "content-length" not in {key.lower() for key in response.request.headers}


def test_null_is_accepted_where_the_contract_allows_missing(client, row, metadata, api_registry):
    nullable = [name for name, meta in metadata["categorical"].items() if meta["nullable"]]
    nullable += [name for name, meta in metadata["numeric"].items() if meta["nullable"]]
    assert nullable, "the contract declares no nullable feature"
    for name in nullable:
        row[name] = None
    response = client.post("/predict", json=row)
    assert response.status_code == 200, response.text
    frame = api_registry.test_frame.head(1).copy()
    for name, value in row.items():
        frame[name] = np.nan if value is None else value
    expected = api_registry.pipeline(api_registry.production).predict_proba(frame)[0, 1]
    assert response.json()["probability"] == pytest.approx(expected, abs=PARITY_TOLERANCE)


def test_unseen_categories_are_accepted_predicted_as_the_model_would_and_counted(
    client, api_registry, metadata
):
    """The policy: a category outside the contract is rejected (422); one the contract allows but training
    never saw is accepted, one-hot encoded as no category (as OneHotEncoder(handle_unknown="ignore") does)
    and counted in unknown_category_total{feature}."""
    unseen = {
        name: [value for value in meta["allowed"] if value not in meta["categories"]]
        for name, meta in metadata["categorical"].items()
    }
    feature = next((name for name, values in unseen.items() if values), None)
    assert feature is not None, "every allowed category was seen in training: nothing to test the policy on"
    value = unseen[feature][0]
    rows = api_registry.rows(20)
    for row in rows:
        row[feature] = value
    before = metric(metric_samples(client), "unknown_category_total", feature=feature)
    single = client.post("/predict", json=rows[0])
    batch = client.post("/predict/batch", json={"records": rows[1 : MAX_BATCH + 1]})
    assert single.status_code == 200 and batch.status_code == 200
    after = metric(metric_samples(client), "unknown_category_total", feature=feature)
    assert after - before == 1 + MAX_BATCH
    frame = api_registry.test_frame.head(MAX_BATCH + 1).copy()
    frame[feature] = value
    expected = api_registry.pipeline(api_registry.production).predict_proba(frame)[:, 1]
    served = [single.json()["probability"]] + [item["probability"] for item in batch.json()["predictions"]]
    np.testing.assert_allclose(served, expected, rtol=0, atol=PARITY_TOLERANCE)
