"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, with every outside address
unreachable: a page that needs the internet shows it, and each request the page makes is recorded."""

from __future__ import annotations

import base64
import itertools
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.processes import free_port, require_tool, running

# Only loopback resolves: an asset from a CDN fails to load instead of loading.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
QUIET = [  # no background traffic of the browser's own, which would muddy the record of the page's
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
]  # fmt: skip


@dataclass
class Visit:
    """What a page did: every URL it requested, and its console errors."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def foreign_hosts(self) -> set[str]:
        """Hosts other than loopback that the page tried to reach (file:, data: and blob: are local)."""
        hosts = set()
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in (
                "127.0.0.1",
                "localhost",
            ):
                hosts.add(str(parts.hostname))
        return hosts


class Page:
    """One tab, over its DevTools websocket."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def visit(self, url: str, ready: str, timeout: float = 30.0) -> Visit:
        """Open `url` and wait until the JavaScript expression `ready` is true."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(ready):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: `{ready}` never became true; {self._record().errors}")
            time.sleep(0.25)
        time.sleep(0.5)  # late requests (fonts, images) still get recorded
        self.evaluate("1")
        return self._record()

    def _record(self) -> Visit:
        visit = Visit()
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
            elif method == "Runtime.exceptionThrown":
                visit.errors.append(str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                visit.errors.append(
                    " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"])
                )
        return visit

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def offline_chromium(workdir: Path) -> Iterator[Page]:
    """A headless Chromium that can reach only 127.0.0.1, and one page in it."""
    chromium = require_tool("chromium")
    port = free_port()
    args = [
        chromium, *QUIET, OFFLINE, f"--remote-debugging-port={port}", "--remote-allow-origins=*",
        f"--user-data-dir={workdir / 'profile'}", "--window-size=1280,2000", "about:blank",
    ]  # fmt: skip
    with running(args, workdir / "chromium.log", f"http://127.0.0.1:{port}/json/version", timeout=60):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            target = json.loads(response.read())
        from websockets.sync.client import connect

        with connect(target["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as socket:
            yield Page(socket)
