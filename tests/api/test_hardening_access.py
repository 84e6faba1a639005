"""Who may call what: API keys (401), JSON bodies only (415), checked in the order 401, 415, 413, 422;
and a client that leaves mid-body, or takes too long to send it, is no server error."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from api.access import InvalidKeyFile, key_hash
from api.main import create_app
from tests.api.support import metric, metric_samples, serving, wait_until

pytestmark = pytest.mark.slow

KEY = "a-test-key-of-the-first-client"
SECOND_KEY = "a-key-added-while-serving"
METRICS_KEY = "the-scraper-key"
MAX_BODY = 16 * 1024
READ_TIMEOUT = 1.0
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "api-keys.txt"
    path.write_text(f"# the test's keys\n\n{key_hash(KEY)}\n")
    return path


@pytest.fixture(scope="module")
def client(api_registry, key_file):
    metrics_keys = key_file.with_name("metrics-keys.txt")
    metrics_keys.write_text(key_hash(METRICS_KEY) + "\n")
    settings = api_registry.settings(
        api_keys_file=key_file,
        metrics_api_keys_file=metrics_keys,
        max_body_bytes=MAX_BODY,
        request_read_timeout_seconds=READ_TIMEOUT,
    )
    with serving(settings) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        wait_until(lambda: client.get("/model").status_code == 200, what="/model with the key")
        yield client


@pytest.fixture(scope="module")
def open_client(api_registry):
    with serving(api_registry.settings(request_read_timeout_seconds=READ_TIMEOUT)) as client:
        yield client


@pytest.fixture
def row(api_registry) -> dict[str, Any]:
    return next(dict(row) for row in api_registry.rows() if None not in row.values())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def scrape(client) -> dict:
    client.headers["Authorization"] = f"Bearer {METRICS_KEY}"
    try:
        return metric_samples(client)
    finally:
        client.headers["Authorization"] = f"Bearer {KEY}"


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_post_that_is_not_json_is_a_415(open_client, row, path, content_type):
    body = json.dumps(row if path == "/predict" else {"records": [row]})
    headers = {"Content-Type": content_type} if content_type else {}
    response = open_client.post(path, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert (
        set(response.json()) == {"detail", "request_id"} and "application/json" in response.json()["detail"]
    )
    assert response.headers["X-Request-ID"] == response.json()["request_id"]
    ok = open_client.post(path, content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_keyed_routes_need_a_key_and_say_so(client, row):
    for method, path, body in (("POST", "/predict", row), ("POST", "/predict/batch", {"records": [row]}),
                               ("GET", "/model", None)):  # fmt: skip
        missing = client.request(method, path, json=body, headers={"Authorization": ""})
        assert missing.status_code == 401, path
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = client.request(method, path, json=body, headers=bearer("not-a-key"))
        assert wrong.status_code == 401
        assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert set(wrong.json()) == {"detail", "request_id"}
        assert wrong.headers["X-Request-ID"] == wrong.json()["request_id"]
        assert client.request(method, path, json=body).status_code == 200


def test_operations_and_docs_stay_open_and_metrics_needs_its_own_key(client):
    for path in ("/health", "/ready", "/docs", "/redoc", "/openapi.json", "/"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200, path
    assert client.get("/metrics").status_code == 401  # the prediction key is not the scraper's
    assert client.get("/metrics", headers=bearer(METRICS_KEY)).status_code == 200


def test_the_checks_run_in_the_order_401_415_413_422(client, row):
    too_large = json.dumps({"records": [row] * 200})
    assert len(too_large) > MAX_BODY
    refused = client.post(
        "/predict", content=too_large, headers={"Authorization": "", "Content-Type": "text/plain"}
    )
    assert refused.status_code == 401
    assert (
        client.post("/predict", content=too_large, headers={"Content-Type": "text/plain"}).status_code == 415
    )
    assert client.post("/predict", content=too_large, headers=JSON_HEADERS).status_code == 413
    assert client.post("/predict", content=b"{}", headers=JSON_HEADERS).status_code == 422


def test_the_key_file_is_reread_when_it_changes(client, key_file, row):
    assert client.post("/predict", json=row, headers=bearer(SECOND_KEY)).status_code == 401
    key_file.write_text(key_file.read_text() + key_hash(SECOND_KEY) + "\n")
    wait_until(
        lambda: client.post("/predict", json=row, headers=bearer(SECOND_KEY)).status_code == 200,
        timeout=10,
        what="the new key to be admitted",
    )


def test_the_openapi_document_declares_the_bearer_scheme(client):
    document = client.get("/openapi.json").json()
    (scheme,) = document["components"]["securitySchemes"].values()
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    assert document["paths"]["/predict"]["post"]["security"]
    assert "security" not in document["paths"]["/health"]["get"]


def test_the_authorization_header_is_never_logged(client, row, caplog):
    caplog.set_level(logging.DEBUG)
    client.post("/predict", json=row)
    client.post("/predict", json=row, headers=bearer("not-a-key"))
    assert caplog.records, "nothing was logged at all"
    assert KEY not in caplog.text and "not-a-key" not in caplog.text


def test_a_key_file_that_is_missing_or_empty_fails_closed(api_registry, tmp_path, row):
    for content in (None, "# no keys yet\n"):
        path = tmp_path / "keys.txt"
        if content is not None:
            path.write_text(content)
        with serving(api_registry.settings(api_keys_file=path)) as client:
            assert client.post("/predict", json=row, headers=bearer(KEY)).status_code == 401
            assert client.get("/health").status_code == 200


def test_a_malformed_key_file_stops_start_up(api_registry, tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"{key_hash(KEY)}\n{KEY}\n")  # a key itself, not its hash
    with pytest.raises(InvalidKeyFile, match=r"keys\.txt:2"):
        create_app(api_registry.settings(api_keys_file=path))


# ------------------------------------------------------------------------ bodies that never end
def call_app(app, receive_messages, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run one POST /predict through the ASGI app, the body delivered by `receive_messages`."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000), "server": ("test", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def send(message):
        sent.append(message)

    async def run():
        await asyncio.wait_for(app(scope, receive_messages(), send), timeout)

    asyncio.run(run())
    return sent


def test_a_client_that_leaves_mid_body_is_logged_at_info_and_counted_apart(open_client, caplog):
    caplog.set_level(logging.INFO)
    before = metric_samples(open_client)
    messages = iter(
        [{"type": "http.request", "body": b'{"age": ', "more_body": True}, {"type": "http.disconnect"}]
    )

    def receive_messages():
        async def receive():
            return next(messages)

        return receive

    sent = call_app(open_client.app, receive_messages)
    assert sent[0]["status"] == 499
    after = metric_samples(open_client)
    assert (
        metric(after, "http_client_disconnects_total") == metric(before, "http_client_disconnects_total") + 1
    )
    assert metric(after, "http_requests_total", status="5xx") == metric(
        before, "http_requests_total", status="5xx"
    )
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(
        "disconnected" in record.getMessage() for record in caplog.records if record.levelno == logging.INFO
    )


def test_a_body_trickled_past_the_deadline_is_a_408_that_closes(open_client):
    def receive_messages():
        async def receive():  # one byte every 50 ms, never the end: no idle timeout would ever fire
            await asyncio.sleep(0.05)
            return {"type": "http.request", "body": b" ", "more_body": True}

        return receive

    sent = call_app(open_client.app, receive_messages)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
