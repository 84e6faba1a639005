"""The server's own protocol class (api/server.py), as uvicorn runs it, on a transport that records what it
is sent: for tests that drive HTTP byte by byte without a socket."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from api.server import GuardedHttpToolsProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.paused = False  # reading, as the protocol's flow control last set it

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def connected(app: Any) -> tuple[GuardedHttpToolsProtocol, RecordingTransport]:
    """A connection of the server's protocol to `app`, made on the running loop."""
    config = Config(app, http=GuardedHttpToolsProtocol, lifespan="off", access_log=False)
    config.load()
    protocol = GuardedHttpToolsProtocol(config, ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport
