"""A response leaves the server in as few socket writes as it can (api/server.py's HeadWithBody): a head and
a body of known length together, in one write; a streamed response's head at once, before its chunks; an
interim 100 Continue at once, since the client waits for it before it sends the body. Driven through the
server's own protocol class, as uvicorn runs it, on a transport that records each write."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from api import server
from api.server import GuardedHttpToolsProtocol
from tests.support.transports import RecordingTransport, connected


@pytest.fixture(autouse=True)
def limits(monkeypatch):
    """The head limits as their defaults: this process's environment names no model to read settings for."""
    monkeypatch.setattr(GuardedHttpToolsProtocol, "limits_read", True)


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


async def stream(request: Request) -> StreamingResponse:
    async def chunks():
        yield b"first"
        await asyncio.sleep(0.05)
        yield b"second"

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", stream)])


async def served(request: bytes, *, settle: float = 0.2) -> RecordingTransport:
    protocol, transport = connected(APP)
    protocol.data_received(request)
    await asyncio.sleep(settle)
    protocol.connection_lost(None)
    return transport


def test_a_sized_answer_is_one_write_of_head_and_body():
    transport = asyncio.run(
        served(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        )
    )
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ncontent-length: 14" in head
    assert body == b'{"received":2}'


def test_one_write_per_answer_on_a_kept_alive_connection():
    one = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
    transport = asyncio.run(served(one * 3))  # pipelined: answered one after the other
    assert [write.count(b"HTTP/1.1 200 OK") for write in transport.writes] == [1, 1, 1]
    assert all(write.endswith(b'{"received":3}') for write in transport.writes)


def test_a_head_request_is_answered_at_once_on_a_kept_alive_connection():
    """A HEAD answer has a Content-Length and no body to send it with: it goes out alone, and a request
    pipelined behind it gets its own answer after it."""
    head = b"HEAD /echo HTTP/1.1\r\nhost: x\r\n\r\n"
    post = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
    transport = asyncio.run(served(head + post))
    sent = b"".join(transport.writes)
    assert sent.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")  # /echo takes POST only
    first, _, rest = sent.partition(b"\r\n\r\n")
    assert b"\r\ncontent-length: " in first  # the length of the body a GET would get, and no body
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b'{"received":3}')


def test_a_streamed_answer_sends_its_head_before_its_chunks():
    transport = asyncio.run(served(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n"))
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\n")  # the head alone, not held for the first chunk
    assert b"transfer-encoding: chunked" in transport.writes[0]
    assert b"".join(transport.writes[1:]) == b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n"


def test_100_continue_goes_out_before_the_body_arrives():
    async def scenario() -> RecordingTransport:
        protocol, transport = connected(APP)
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
        )
        await asyncio.sleep(0.1)
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # the client sends nothing until then
        protocol.data_received(b"data")
        await asyncio.sleep(0.1)
        protocol.connection_lost(None)
        return transport

    transport = asyncio.run(scenario())
    assert len(transport.writes) == 2 and transport.writes[1].endswith(b'{"received":4}')


@pytest.mark.parametrize("then", ["close", "write"])
def test_a_held_head_is_never_lost(then):
    transport = RecordingTransport()
    cycle_transport = server.HeadWithBody(transport)
    cycle_transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == []
    if then == "close":  # an app that fails after its head: the head goes out, then the connection closes
        cycle_transport.close()
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"] and transport.closed
    else:
        cycle_transport.write(b"ok")
        cycle_transport.write(b"")  # a later write is not held: only the head is
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b""]
