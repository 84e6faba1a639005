"""A request head pipelined behind one still being answered is held to MAX_HEADER_BYTES like any other:
one that keeps growing stops the server reading once past the limit (the rest waits in the socket), and
is a 431 that closes once the answer owed before it is sent; and
one that arrives whole, in the same read as the end of the request before it, is measured when it
completes. Driven through the server's own protocol class (api/server.py) on a recording transport."""

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

MAX_HEADER_BYTES = 4096


@pytest.fixture(autouse=True)
def limits(monkeypatch):
    monkeypatch.setattr(GuardedHttpToolsProtocol, "limits_read", True)
    monkeypatch.setattr(GuardedHttpToolsProtocol, "max_header_bytes", MAX_HEADER_BYTES)


def slow_app(release: asyncio.Event) -> Starlette:
    """/slow answers once `release` is set; /echo at once, with the length of its body."""

    async def slow(request: Request) -> JSONResponse:
        await release.wait()
        return JSONResponse({"slow": True})

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"received": len(await request.body())})

    return Starlette(routes=[Route("/slow", slow), Route("/echo", echo, methods=["POST"])])


def statuses(transport: RecordingTransport) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", b"".join(transport.writes))  # a body ends with no line break


def test_a_growing_head_pipelined_behind_a_request_being_answered_stops_reading_then_is_a_431():
    async def scenario() -> tuple[RecordingTransport, int, bool, bool]:
        release = asyncio.Event()
        protocol, transport = connected(slow_app(release))
        protocol.data_received(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(0.05)  # the first request is being answered, and waits
        protocol.data_received(b"GET /slow HTTP/1.1\r\nhost: x\r\nx-big: ")
        reads = 0
        while not transport.paused and reads < 100:  # a header that never ends, 1 KiB a read
            protocol.data_received(b"b" * 1024)
            reads += 1
        paused, closed_before_the_answer = transport.paused, transport.closed
        release.set()
        await asyncio.sleep(0.05)
        return transport, reads, paused, closed_before_the_answer

    transport, reads, paused, closed_before_the_answer = asyncio.run(scenario())
    assert paused and reads <= MAX_HEADER_BYTES // 1024 + 1
    assert not closed_before_the_answer  # the answer owed comes first, then the refusal
    assert statuses(transport) == [b"200", b"431"] and transport.closed


def test_a_whole_head_over_the_limit_in_the_read_that_ends_the_request_before_it_is_a_431():
    async def scenario() -> RecordingTransport:
        protocol, transport = connected(slow_app(asyncio.Event()))
        protocol.data_received(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n")
        await asyncio.sleep(0.05)
        big = b"x-big: " + b"b" * (2 * MAX_HEADER_BYTES) + b"\r\n"
        protocol.data_received(b"abc" + b"GET /slow HTTP/1.1\r\nhost: x\r\n" + big + b"\r\n")
        await asyncio.sleep(0.1)
        protocol.connection_lost(None)
        return transport

    transport = asyncio.run(scenario())
    assert statuses(transport) == [b"200", b"431"]


def test_pipelined_heads_within_the_limit_are_served_in_turn():
    async def scenario() -> RecordingTransport:
        release = asyncio.Event()
        protocol, transport = connected(slow_app(release))
        fine = b"x-fine: " + b"c" * (MAX_HEADER_BYTES // 2) + b"\r\n"
        protocol.data_received(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        protocol.data_received(b"POST /echo HTTP/1.1\r\nhost: x\r\n" + fine + b"content-length: 2\r\n\r\nok")
        release.set()
        await asyncio.sleep(0.1)
        return transport

    transport = asyncio.run(scenario())
    assert statuses(transport) == [b"200", b"200"] and not transport.closed and not transport.paused
    assert b"".join(transport.writes).endswith(b'{"received":2}')


def test_the_431_waits_for_every_answer_owed_before_it():
    """Two requests queued behind the one in flight, then a head over the limit: each of the three is
    answered, in order, before the 431 (a client would take a 431 in their place as their answer)."""

    async def scenario() -> RecordingTransport:
        release = asyncio.Event()
        protocol, transport = connected(slow_app(release))
        protocol.data_received(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        protocol.data_received(
            b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
            b"GET /slow HTTP/1.1\r\nhost: x\r\nx-big: "
        )
        for _ in range(2 * MAX_HEADER_BYTES // 1024):
            protocol.data_received(b"b" * 1024)
        release.set()  # both /slow requests answer at once, the /echo after them
        await asyncio.sleep(0.1)
        return transport

    transport = asyncio.run(scenario())
    assert statuses(transport) == [b"200", b"200", b"200", b"431"] and transport.closed
    assert transport.writes[-1].startswith(b"HTTP/1.1 431")


def test_an_app_that_reads_while_it_answers_does_not_let_an_oversized_pipelined_head_grow():
    """uvicorn resumes reading on each `receive()` of the request being answered (here: a disconnect check
    every 10 ms): what then arrives of a pipelined head already over the limit is not kept."""

    async def polling(request: Request) -> JSONResponse:
        for _ in range(30):
            await request.is_disconnected()
            await asyncio.sleep(0.01)
        return JSONResponse({"polled": True})

    async def scenario() -> tuple[RecordingTransport, int, int]:
        protocol, transport = connected(Starlette(routes=[Route("/poll", polling)]))
        protocol.data_received(b"GET /poll HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(0.01)
        protocol.data_received(b"GET /poll HTTP/1.1\r\nhost: x\r\nx-big: ")
        fed = 0
        for _ in range(60):  # whenever reading is on, a read of 64 KiB
            if not transport.paused and not transport.closed:
                protocol.data_received(b"b" * 65536)
                fed += 1
            await asyncio.sleep(0.005)
        return transport, fed, protocol.head_bytes

    transport, fed, held = asyncio.run(scenario())
    assert fed > 1  # the app's reads did resume reading, again and again
    assert held <= MAX_HEADER_BYTES + 65536  # of the head, at most one read past the limit was taken
    assert statuses(transport) == [b"200", b"431"]
