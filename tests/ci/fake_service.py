"""A tiny stand-in for a deployed api and its platform's deploy hook, on a loopback port."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ServiceState:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "adult-income", "version": "3"})
    not_ready_for: int = 0  # how many /ready calls answer 503 before it turns ready
    ready: bool = True
    # What the platform serves after a hook call, per image; an image not listed breaks /ready.
    images: dict[str, str] = field(default_factory=dict)
    hook_calls: list[dict[str, Any]] = field(default_factory=list)
    hook_headers: list[dict[str, str]] = field(default_factory=list)
    api_key: str | None = None  # when set, /model answers 401 without `Authorization: Bearer <it>`


def _handler(state: ServiceState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/ready":
                if state.not_ready_for > 0:
                    state.not_ready_for -= 1
                    self._send(503, {"detail": "model not loaded yet"})
                elif not state.ready:
                    self._send(503, {"detail": "broken image"})
                else:
                    self._send(200, {"status": "ready"})
            elif self.path == "/model":
                if state.api_key and self.headers.get("Authorization") != f"Bearer {state.api_key}":
                    self._send(401, {"detail": "this route needs an API key"})
                else:
                    self._send(200, state.model)
            else:
                self._send(404, {"detail": "not found"})

        def do_POST(self) -> None:
            if self.path != "/hook":
                self._send(404, {"detail": "not found"})
                return
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.hook_calls.append(payload)
            state.hook_headers.append(dict(self.headers))
            state.ready = payload["image"] in state.images
            if state.ready:
                state.model = {"name": payload["model_name"], "version": state.images[payload["image"]]}
            self._send(202, {"accepted": payload["image"]})

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fake_service(state: ServiceState) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
