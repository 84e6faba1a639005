"""Slow and huge clients against the real server (`python -m api`, api/server.py): a head that never ends
is a 408 that closes, however it trickles, on a new or a kept-alive connection; a head over
MAX_HEADER_BYTES is a 431 that closes; past MAX_CONCURRENT_REQUESTS a request is a 503 that says when to
retry. All are counted, name their request like every answer, and /health answers throughout."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

pytestmark = pytest.mark.slow

READ_TIMEOUT = 1.0
MAX_HEADER_BYTES = 4096
GIVE_UP_SECONDS = 8.0  # well past the deadline: a server without one is still silent then


def server(tmp_path_factory, **settings: str):
    port = free_port()
    env = subprocess_env(
        MODEL_URI=str(tmp_path_factory.mktemp("no-model") / "missing"),  # no model needed for the head
        REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
        MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        KEEP_ALIVE_TIMEOUT_SECONDS="30",  # longer than the head deadline: the deadline is what closes
        **settings,
    )
    log = tmp_path_factory.mktemp("server") / "api.log"
    return running(
        [sys.executable, "-m", "api", "--port", str(port)],
        log,
        ready_url=f"http://127.0.0.1:{port}/health",
        cwd=REPO_ROOT,
        env=env,
    ), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    process, url = server(tmp_path_factory)
    with process:
        yield url


def named_request(answer: bytes) -> tuple[str, dict]:
    """The X-Request-ID header of a raw answer, and its JSON body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    return headers[b"x-request-id"].decode(), json.loads(body)


def connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=GIVE_UP_SECONDS)
    return sock


def answer_then_close(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Everything the server sends until it closes, sending `trickle` a byte at a time meanwhile."""
    with sock:
        return _until_closed(sock, trickle)


def _until_closed(sock: socket.socket, trickle: bytes) -> bytes:
    received = b""
    sock.settimeout(0.1)
    deadline = time.monotonic() + GIVE_UP_SECONDS
    pending = list(trickle)
    while time.monotonic() < deadline:
        if pending:
            try:
                sock.send(bytes([pending.pop(0)]))
            except OSError:
                pending = []
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:  # closed while we were still sending: closed all the same
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection stayed open; received {received[:200]!r}")


def sample(base_url: str, series: str) -> float:
    """The value of one series (its name and labels, as /metrics writes them), 0 before it exists."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{series} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def refusals(base_url: str, reason: str) -> float:
    return sample(base_url, f'http_connection_refusals_total{{reason="{reason}"}}')


def refusals_or_busy(base_url: str) -> float | None:
    """The concurrency refusals so far, or None while the server is still at its limit."""
    try:
        return refusals(base_url, "concurrency_limit")
    except urllib.error.HTTPError as error:
        if error.code == 503:
            return None
        raise


def health(base_url: str) -> int:
    with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
        return response.status


def test_a_head_trickled_past_the_deadline_is_a_408_that_closes(base_url):
    before = refusals(base_url, "head_timeout")
    half_sent = [connect(base_url) for _ in range(20)]
    for sock in half_sent:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
    # One byte every 0.1 s, never the blank line: an idle timeout would never fire.
    answers = [answer_then_close(half_sent[0], trickle=b"X-Slow: " + b"a" * 200)]
    answers += [answer_then_close(sock) for sock in half_sent[1:]]
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[0]
    request_id, body = named_request(answers[0])
    assert body == {"detail": body["detail"], "request_id": request_id} and "did not arrive" in body["detail"]
    assert len({named_request(answer)[0] for answer in answers}) == len(answers)  # one id each
    assert health(base_url) == 200
    assert refusals(base_url, "head_timeout") >= before + 20


def test_a_silent_connection_and_a_kept_alive_one_are_cut_off_too(base_url):
    silent = connect(base_url)
    assert answer_then_close(silent).startswith(b"HTTP/1.1 408")
    kept = connect(base_url)
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    first = b""
    while not first.endswith(b'{"status":"ok"}'):  # the head and the body may come in separate reads
        chunk = kept.recv(65536)
        assert chunk, first
        first += chunk
    assert first.startswith(b"HTTP/1.1 200")
    kept.sendall(b"GET /health HTTP/1.1\r\n")  # the next head, never finished
    assert answer_then_close(kept).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "never-ending"])
def test_a_head_over_max_header_bytes_is_a_431_that_closes(base_url, streamed):
    before = refusals(base_url, "headers_too_large")
    sock = connect(base_url)
    big_header = b"X-Big: " + b"b" * (2 * MAX_HEADER_BYTES) + b"\r\n"
    if streamed:  # a header that never ends, in reads of 1 KB
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: ")
        for _ in range(2 * MAX_HEADER_BYTES // 1024):
            try:
                sock.sendall(b"b" * 1024)
            except OSError:
                break
    else:  # the whole request in one write, so that one read may hold it all
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Request-ID: big-1\r\n" + big_header + b"\r\n")
    answer = answer_then_close(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    request_id, body = named_request(answer)
    assert body["request_id"] == request_id and "exceeds" in body["detail"]
    if not streamed:  # the whole head arrived, so the client's own id is the answer's
        assert request_id == "big-1"
    assert health(base_url) == 200
    assert refusals(base_url, "headers_too_large") == before + 1


def test_a_head_within_the_limit_is_served(base_url):
    sock = connect(base_url)
    sock.sendall(
        b"GET /health HTTP/1.1\r\nHost: test\r\nX-Fine: " + b"c" * 1000 + b"\r\nConnection: close\r\n\r\n"
    )
    assert answer_then_close(sock).startswith(b"HTTP/1.1 200")


def test_past_max_concurrent_requests_a_request_is_a_503_that_names_it_and_says_when_to_retry(
    tmp_path_factory,
):
    process, url = server(tmp_path_factory, MAX_CONCURRENT_REQUESTS="3")
    with process:
        before = refusals(url, "concurrency_limit")
        held = [connect(url) for _ in range(3)]  # open connections count against the limit in uvicorn
        try:
            sock = connect(url)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Request-ID: busy-1\r\n\r\n")
            answer = answer_then_close(sock)
        finally:
            for connection in held:
                connection.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert b"\r\nretry-after: 1\r\n" in answer.lower()
        request_id, body = named_request(answer)
        assert request_id == "busy-1" and body == {"detail": body["detail"], "request_id": "busy-1"}
        assert "MAX_CONCURRENT_REQUESTS" in body["detail"]
        # Once the server has seen the held connections close, it serves again.
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while refusals_or_busy(url) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refusals_or_busy(url) == before + 1


def test_a_body_still_arriving_after_its_early_answer_is_not_taken_for_the_next_head(base_url):
    """A 404 (or a 413) is sent before the body is read. The rest of the body, 3x MAX_HEADER_BYTES sent
    within its deadline, is still this request's: no stray 431 or 408 follows, and the kept-alive
    connection then serves the next request."""
    before = refusals(base_url, "headers_too_large") + refusals(base_url, "head_timeout")
    size = 3 * MAX_HEADER_BYTES
    sock = connect(base_url)
    with sock:
        sock.sendall(
            b"POST /no-such-route HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(size).encode() + b"\r\n\r\n"
        )
        chunks = 12
        for _ in range(chunks):  # 12 x 1 KiB over about 0.5 s, within the 1 s deadline
            sock.sendall(b"a" * (size // chunks))
            time.sleep(0.5 / chunks)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        received = _until_closed(sock, b"")
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)  # a body ends with no line break
    assert statuses == [b"404", b"200"], received[:300]
    assert refusals(base_url, "headers_too_large") + refusals(base_url, "head_timeout") == before


def test_the_rest_of_a_body_trickled_after_its_early_answer_has_a_deadline(base_url):
    """The app is done with a body it answered before reading, so its own deadline (api/bodies.py) no
    longer runs, and uvicorn's keep-alive timer restarts at every byte: the server keeps the head's
    deadline for the rest of that body, and past it closes, with nothing more written (no answer is
    owed), and counts it as a body timeout."""
    before = sample(base_url, "http_body_timeouts_total")
    sock = connect(base_url)
    with sock:
        sock.sendall(
            b"POST /no-such-route HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        started = time.monotonic()
        received = _until_closed(sock, b"a" * 1000)  # a byte every 0.1 s at most, for far longer
        elapsed = time.monotonic() - started
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"404"], received[:300]
    assert elapsed < 3 * READ_TIMEOUT + 1
    assert sample(base_url, "http_body_timeouts_total") == before + 1
