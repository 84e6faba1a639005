"""A request answered before its body ended (a 401, a 404, a 413 on its declared length): once the rest
of its body has arrived, the kept-alive connection is idle like after any answer, and closes silently at
KEEP_ALIVE_TIMEOUT_SECONDS, not with a 408 at the head deadline; a request that follows at once is served
whole. Driven through the server's own protocol class (api/server.py) on a recording transport."""

from __future__ import annotations

import asyncio
import re

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.server import GuardedHttpToolsProtocol
from tests.support.transports import RecordingTransport, connected

HEAD_TIMEOUT, KEEP_ALIVE = 0.4, 0.2  # the defaults' order: keep-alive first
EARLY = b"POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nabc"


@pytest.fixture(autouse=True)
def limits(monkeypatch):
    monkeypatch.setattr(GuardedHttpToolsProtocol, "limits_read", True)
    monkeypatch.setattr(GuardedHttpToolsProtocol, "head_timeout", HEAD_TIMEOUT)


def early_app() -> Starlette:
    async def early(request: Request) -> JSONResponse:  # answers without reading its body
        return JSONResponse({"early": True})

    async def slow(request: Request) -> JSONResponse:  # longer than the keep-alive timeout
        await asyncio.sleep(2 * KEEP_ALIVE)
        return JSONResponse({"slow": True})

    return Starlette(routes=[Route("/early", early, methods=["POST"]), Route("/slow", slow)])


def statuses(transport: RecordingTransport) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", b"".join(transport.writes))


def keeping_alive(transport_app: Starlette) -> tuple[GuardedHttpToolsProtocol, RecordingTransport]:
    protocol, transport = connected(transport_app)
    protocol.timeout_keep_alive = KEEP_ALIVE
    return protocol, transport


def test_an_idle_connection_after_an_early_answer_closes_at_keep_alive_without_a_408():
    async def scenario() -> tuple[RecordingTransport, bool]:
        protocol, transport = keeping_alive(early_app())
        protocol.data_received(EARLY)
        await asyncio.sleep(0.05)  # answered, the body still arriving
        protocol.data_received(b"def")  # its end: uvicorn's keep-alive timer was cancelled by this read
        await asyncio.sleep(KEEP_ALIVE + 0.1)
        closed_at_keep_alive = transport.closed
        await asyncio.sleep(HEAD_TIMEOUT)
        return transport, closed_at_keep_alive

    transport, closed_at_keep_alive = asyncio.run(scenario())
    assert closed_at_keep_alive
    assert statuses(transport) == [b"200"]  # no 408 for a head nobody was sending


def test_a_request_in_the_read_that_ends_an_answered_body_is_not_cut_off_by_that_timer():
    async def scenario() -> tuple[RecordingTransport, bool]:
        protocol, transport = keeping_alive(early_app())
        protocol.data_received(EARLY)
        await asyncio.sleep(0.05)
        protocol.data_received(b"def" + b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(KEEP_ALIVE + 0.1)
        closed_while_serving = transport.closed
        await asyncio.sleep(2 * KEEP_ALIVE)
        return transport, closed_while_serving

    transport, closed_while_serving = asyncio.run(scenario())
    assert not closed_while_serving
    assert statuses(transport) == [b"200", b"200"]
    assert b"".join(transport.writes).endswith(b'{"slow":true}')
