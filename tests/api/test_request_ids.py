"""Every answer names its request, in the body and in the X-Request-ID header: the client's id when it is
well formed, else a UUID4; a batch's records are `<request id>-<i>`."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.api.support import serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(api_registry):
    with serving(api_registry.settings(max_body_bytes=4096)) as client:
        yield client


@pytest.fixture
def row(api_registry):
    return api_registry.rows(1)[0]


def is_uuid4(text: str) -> bool:
    return str(uuid.UUID(text)) == text and uuid.UUID(text).version == 4


def named(response) -> str:
    """The request id the answer carries, the same in its body and its header."""
    request_id = response.json()["request_id"]
    assert response.headers["X-Request-ID"] == request_id
    return request_id


def test_an_answer_without_a_client_id_carries_a_new_uuid4(client, row):
    first, second = (named(client.post("/predict", json=row)) for _ in range(2))
    assert is_uuid4(first) and is_uuid4(second) and first != second


@pytest.mark.parametrize("request_id", ["a", "trace:01.ab_CD-9", "x" * 128])
def test_a_well_formed_client_id_is_echoed(client, row, request_id):
    response = client.post("/predict", json=row, headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert named(response) == request_id


@pytest.mark.parametrize("request_id", ["", "x" * 129, "has space", "semi;colon", "é", '"quoted"'])
def test_a_malformed_client_id_is_replaced(client, row, request_id):
    response = client.post("/predict", json=row, headers={"X-Request-ID": request_id.encode()})
    assert response.status_code == 200
    assert is_uuid4(named(response))


def test_a_batch_names_itself_and_each_record(client, api_registry):
    rows = api_registry.rows(3)
    response = client.post("/predict/batch", json={"records": rows}, headers={"X-Request-ID": "batch-7"})
    assert response.status_code == 200
    assert named(response) == "batch-7"
    assert [item["request_id"] for item in response.json()["predictions"]] == [
        "batch-7-0",
        "batch-7-1",
        "batch-7-2",
    ]


def test_refusals_carry_the_id_too(client, row):
    cases = {
        422: client.post("/predict", json={**row, "age": "old"}, headers={"X-Request-ID": "r422"}),
        413: client.post(
            "/predict/batch",
            content=json.dumps({"records": [row] * 50}),
            headers={"Content-Type": "application/json", "X-Request-ID": "r413"},
        ),
        415: client.post("/predict", content=json.dumps(row), headers={"X-Request-ID": "r415"}),
        404: client.get("/nowhere", headers={"X-Request-ID": "r404"}),
        405: client.get("/predict", headers={"X-Request-ID": "r405"}),
    }
    for status, response in cases.items():
        assert response.status_code == status, response.text
        assert named(response) == f"r{status}"
    assert cases[422].json()["detail"][0]["loc"] == ["body", "age"]


def test_a_401_carries_the_id(api_registry, tmp_path, row):
    (tmp_path / "keys.txt").write_text("")
    with serving(api_registry.settings(api_keys_file=tmp_path / "keys.txt")) as client:
        response = client.post("/predict", json=row, headers={"X-Request-ID": "r401"})
    assert response.status_code == 401
    assert named(response) == "r401"


def test_a_503_while_no_model_serves_carries_the_id(api_registry, row):
    with serving(api_registry.settings(model_alias="no-such-alias"), ready=False) as client:
        response = client.post("/predict", json=row, headers={"X-Request-ID": "r503"})
    assert response.status_code == 503
    assert named(response) == "r503"


def test_operations_answers_carry_the_header(client):
    for path in ("/health", "/ready", "/metrics"):
        assert client.get(path, headers={"X-Request-ID": "ops"}).headers["X-Request-ID"] == "ops"


def test_a_new_id_is_a_canonical_random_uuid4():
    import uuid

    from api.request_ids import new_id

    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # every variant nibble occurs: the two bits after the fixed ones are random too
    assert {value[19] for value in ids} == set("89ab")
