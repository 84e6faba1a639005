"""A fake GitHub API and the retrain receiver (api/retrain_dispatch.py) as a real process, both on
loopback: what tests/retraining and the end-to-end test drive."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

TOKEN = "ghp_test-token-never-logged-0123456789"
REPOSITORY = "example-owner/example-repo"


@dataclass
class FakeGitHub:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 204  # what GitHub answers a dispatch with

    def dispatches(self) -> list[dict[str, Any]]:
        return [request for request in self.requests if request["path"].endswith("/dispatches")]


@contextmanager
def fake_github() -> Iterator[FakeGitHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fake = FakeGitHub(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # what a client that followed a redirect would send
            fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": None})
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(fake.status)
            answer = b"" if fake.status == 204 else b'{"message": "Bad credentials"}'
            if 300 <= fake.status < 400:  # a redirect that a client must not follow with its token
                self.send_header("Location", f"{fake.url}/moved")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Receiver:
    url: str
    log: Path

    def post(self, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/alerts", data=data, method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@contextmanager
def receiver(
    tmp_path: Path, github: FakeGitHub | None, port: int | None = None, **env: str
) -> Iterator[Receiver]:
    port = port or free_port()
    # Empty unless given: GitHub Actions itself sets GITHUB_REPOSITORY and GITHUB_API_URL.
    settings = dict.fromkeys(
        ("GITHUB_API_URL", "GITHUB_REPOSITORY", "RETRAIN_DISPATCH_TOKEN", "RETRAIN_DISPATCH_STATE_FILE"), ""
    )
    if github is not None:
        settings.update(GITHUB_API_URL=github.url, RETRAIN_DISPATCH_TOKEN=TOKEN, GITHUB_REPOSITORY=REPOSITORY)
    settings.update(env)
    log = tmp_path / f"receiver-{port}.log"
    args = ["python", "-m", "api.retrain_dispatch", "--host", "127.0.0.1", "--port", str(port)]
    with running(
        args,
        log,
        f"http://127.0.0.1:{port}/health",
        timeout=60,
        cwd=REPO_ROOT,
        env=subprocess_env(**settings),
    ):
        yield Receiver(f"http://127.0.0.1:{port}", log)
