"""A bad body costs the service little and never a 500: its 422 is bounded in size and in errors, an object
with too many keys never reaches pydantic, and invalid UTF-8 is a 422 like any other malformed body."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from api.rejections import MAX_REJECTION_BYTES, key_bound
from tests.api.support import serving

pytestmark = pytest.mark.slow

MAX_ERRORS = 20
MAX_BATCH = 50
UNKNOWN_KEYS = 150_000


@pytest.fixture(scope="module")
def client(api_registry):
    settings = api_registry.settings(max_validation_errors=MAX_ERRORS, max_batch_size=MAX_BATCH)
    with serving(settings) as client:
        yield client


@pytest.fixture
def row(api_registry) -> dict[str, Any]:
    return next(dict(row) for row in api_registry.rows() if None not in row.values())


@pytest.fixture
def pydantic_inputs(client, monkeypatch) -> list[Any]:
    """The bodies pydantic is asked to validate, decoded, for both request models of the served model."""
    seen: list[Any] = []
    requests = client.app.state.service.model.requests
    for model in (requests.record, requests.batch):
        validate = model.model_validate_json

        def spy(body, validate=validate):
            seen.append(msgspec.json.decode(body))
            return validate(body)

        monkeypatch.setattr(model, "model_validate_json", spy)
    return seen


def objects_of(decoded: Any) -> list[dict[str, Any]]:
    found = [decoded] if isinstance(decoded, dict) else []
    if isinstance(decoded, dict) and isinstance(decoded.get("records"), list):
        found += [record for record in decoded["records"] if isinstance(record, dict)]
    return found


def many_keys(count: int) -> dict[str, int]:
    return {f"k{index:06d}": 1 for index in range(count)}


def post(client, path: str, body: bytes):
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


def test_150000_unknown_keys_get_a_small_422_and_never_reach_pydantic(client, row, pydantic_inputs):
    body = json.dumps(many_keys(UNKNOWN_KEYS), separators=(",", ":")).encode()
    assert 1_700_000 < len(body) < 2 * 1024 * 1024
    response = post(client, "/predict", body)
    assert response.status_code == 422
    assert len(response.content) < MAX_REJECTION_BYTES
    answer = response.json()
    assert len(answer["detail"]) == MAX_ERRORS
    assert answer["errors_omitted"] == UNKNOWN_KEYS - MAX_ERRORS
    assert {issue["type"] for issue in answer["detail"]} == {"extra_forbidden"}

    # A body just within the bound does reach pydantic, which reports its errors, bounded the same way.
    bound = key_bound(len(row), MAX_ERRORS)
    within = post(client, "/predict", json.dumps({**row, **many_keys(bound - len(row))}).encode())
    assert within.status_code == 422
    assert len(within.json()["detail"]) == MAX_ERRORS
    assert within.json()["errors_omitted"] == bound - len(row) - MAX_ERRORS
    assert pydantic_inputs, "pydantic saw no body at all"
    assert max(len(obj) for decoded in pydantic_inputs for obj in objects_of(decoded)) <= bound


def test_a_batch_record_with_too_many_keys_never_reaches_pydantic(client, row, pydantic_inputs):
    body = json.dumps({"records": [row, {**row, **many_keys(10_000)}]}).encode()
    response = post(client, "/predict/batch", body)
    assert response.status_code == 422
    answer = response.json()
    assert len(answer["detail"]) == MAX_ERRORS
    assert answer["errors_omitted"] == 10_000 - MAX_ERRORS
    assert answer["detail"][0]["loc"][:3] == ["body", "records", 1]
    assert pydantic_inputs == []


def test_a_batch_of_bad_records_reports_the_first_errors_and_counts_the_rest(client, row):
    bad = {name: [] for name in row}  # every field the wrong type
    response = post(client, "/predict/batch", json.dumps({"records": [bad] * MAX_BATCH}).encode())
    assert response.status_code == 422
    answer = response.json()
    assert len(answer["detail"]) == MAX_ERRORS
    assert answer["errors_omitted"] == MAX_BATCH * len(row) - MAX_ERRORS


def test_a_huge_key_is_not_echoed_whole(client, row):
    response = post(client, "/predict", json.dumps({**row, "k" * 1_000_000: 1}).encode())
    assert response.status_code == 422
    assert len(response.content) < 2_000


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("where", ["value", "key"])
def test_invalid_utf8_is_a_422(client, row, path, where):
    text = json.dumps(row)
    name = next(name for name, value in row.items() if isinstance(value, str))
    if where == "value":
        raw = text.replace(json.dumps(row[name]), '"\xff"').encode("latin-1")
    else:
        raw = text.replace(f'"{name}"', '"\xff"').encode("latin-1")
    body = raw if path == "/predict" else b'{"records": [' + raw + b"]}"
    response = post(client, path, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"
