"""The trailer section of a chunked request body is held to MAX_HEADER_BYTES like a head: httptools gathers
it the same way, at a cost that grows with the square of its size. One that keeps growing is a 431 before
more than one read past the limit is taken; one that arrives whole is measured at the message's end; the
request it belongs to never sees its body end; and trailers within the limit never join the request's
headers. Driven through the server's own protocol class (api/server.py) on a recording transport."""

from __future__ import annotations

import asyncio
import re

import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.server import GuardedHttpToolsProtocol
from tests.support.transports import RecordingTransport, connected

MAX_HEADER_BYTES = 4096
CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"3\r\nabc\r\n0\r\n"  # a chunk of data, then the last one: its trailer section follows


@pytest.fixture(autouse=True)
def limits(monkeypatch):
    monkeypatch.setattr(GuardedHttpToolsProtocol, "limits_read", True)
    monkeypatch.setattr(GuardedHttpToolsProtocol, "max_header_bytes", MAX_HEADER_BYTES)


class Seen:
    """What the app's /echo saw of each request: its body, or that the client went away first."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[list[str]] = []
        self.disconnects = 0


def echo_app(seen: Seen, release: asyncio.Event | None = None) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        seen.headers.append(list(request.headers.keys()))
        try:
            body = await request.body()
        except ClientDisconnect:
            seen.disconnects += 1
            return JSONResponse({"gone": True})
        seen.bodies.append(body)
        return JSONResponse({"received": len(body)})

    async def slow(request: Request) -> JSONResponse:
        assert release is not None
        await release.wait()
        return JSONResponse({"slow": True})

    async def early(request: Request) -> JSONResponse:  # answers without reading its body
        return JSONResponse({"early": True})

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/slow", slow),
            Route("/early", early, methods=["POST"]),
        ]
    )


def statuses(transport: RecordingTransport) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", b"".join(transport.writes))


async def settle(protocol: GuardedHttpToolsProtocol) -> None:
    await asyncio.sleep(0.05)
    protocol.connection_lost(None)  # as the closed socket would: the app sees the disconnect
    await asyncio.sleep(0.05)


def test_a_growing_trailer_section_is_a_431_before_it_is_held_past_the_limit():
    async def scenario() -> tuple[RecordingTransport, Seen, int]:
        seen = Seen()
        protocol, transport = connected(echo_app(seen))
        protocol.data_received(CHUNKED_HEAD + LAST_CHUNK + b"x-trailer: ")
        reads = 0
        while not transport.closed and reads < 100:  # a trailer that never ends, 1 KiB a read
            protocol.data_received(b"t" * 1024)
            reads += 1
        await settle(protocol)
        return transport, seen, reads

    transport, seen, reads = asyncio.run(scenario())
    assert reads <= MAX_HEADER_BYTES // 1024 + 1
    assert statuses(transport) == [b"431"] and transport.closed
    assert seen.bodies == [] and seen.disconnects == 1  # the request never saw its body end


def test_a_whole_trailer_section_over_the_limit_in_one_read_is_measured_at_the_message_end():
    async def scenario() -> tuple[RecordingTransport, Seen]:
        seen = Seen()
        protocol, transport = connected(echo_app(seen))
        trailer = b"x-trailer: " + b"t" * (2 * MAX_HEADER_BYTES) + b"\r\n"
        protocol.data_received(CHUNKED_HEAD + LAST_CHUNK + trailer + b"\r\n")
        await settle(protocol)
        return transport, seen

    transport, seen = asyncio.run(scenario())
    assert statuses(transport) == [b"431"] and transport.closed
    assert seen.bodies == []


def test_trailers_within_the_limit_are_served_and_never_join_the_request_headers():
    trailer = b"x-trailer: " + b"t" * (MAX_HEADER_BYTES // 2) + b"\r\n\r\n"

    async def scenario() -> tuple[RecordingTransport, Seen]:
        seen = Seen()
        protocol, transport = connected(echo_app(seen))
        # Whole in one read, before the app runs: uvicorn has put the trailer among the headers by then.
        protocol.data_received(CHUNKED_HEAD + LAST_CHUNK + trailer)
        await asyncio.sleep(0.05)
        # Then over many reads, each under the limit, while the app waits for the body.
        protocol.data_received(CHUNKED_HEAD + b"3\r\nabc\r\n")
        await asyncio.sleep(0.05)
        protocol.data_received(b"4\r\ndefg\r\n0\r\n")
        for start in range(0, len(trailer), 1000):
            protocol.data_received(trailer[start : start + 1000])
        await asyncio.sleep(0.05)
        return transport, seen

    transport, seen = asyncio.run(scenario())
    assert statuses(transport) == [b"200", b"200"] and not transport.closed
    assert seen.bodies == [b"abc", b"abcdefg"]
    assert seen.headers == [["host", "transfer-encoding"]] * 2


def test_oversized_trailers_after_their_request_was_answered_close_the_connection_without_a_second_answer():
    async def scenario() -> RecordingTransport:
        protocol, transport = connected(echo_app(Seen()))
        protocol.data_received(CHUNKED_HEAD.replace(b"/echo", b"/early") + LAST_CHUNK + b"x-trailer: ")
        await asyncio.sleep(0.05)  # answered already: the rest of its body is not read
        for _ in range(2 * MAX_HEADER_BYTES // 1024):
            if transport.closed:
                break
            protocol.data_received(b"t" * 1024)
        return transport

    transport = asyncio.run(scenario())
    assert statuses(transport) == [b"200"] and transport.closed


def test_oversized_trailers_of_a_pipelined_request_are_a_431_after_the_answer_owed_before_it():
    async def scenario() -> tuple[RecordingTransport, bool, Seen]:
        seen, release = Seen(), asyncio.Event()
        protocol, transport = connected(echo_app(seen, release))
        protocol.data_received(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(0.05)  # the first request is being answered, and waits
        protocol.data_received(CHUNKED_HEAD + LAST_CHUNK + b"x-trailer: ")
        for _ in range(2 * MAX_HEADER_BYTES // 1024):
            protocol.data_received(b"t" * 1024)
        closed_before_the_answer = transport.closed
        release.set()
        await settle(protocol)
        return transport, closed_before_the_answer, seen

    transport, closed_before_the_answer, seen = asyncio.run(scenario())
    assert not closed_before_the_answer
    assert statuses(transport) == [b"200", b"431"] and transport.closed
    assert seen.bodies == []


def test_chunks_whose_size_lines_come_in_reads_of_their_own_are_data_not_trailers():
    """Each read after the first holds a chunk's data, its end and the next chunk's size line, which the
    read after it continues from: more than the limit in all, and none of it trailers."""
    chunk = 4 * MAX_HEADER_BYTES

    async def scenario() -> tuple[RecordingTransport, Seen]:
        seen = Seen()
        protocol, transport = connected(echo_app(seen))
        size = b"%x;name=value\r\n" % chunk
        protocol.data_received(CHUNKED_HEAD + size)
        await asyncio.sleep(0.01)
        for _ in range(3):
            protocol.data_received(b"a" * chunk + b"\r\n" + size)
        protocol.data_received(b"a" * chunk + b"\r\n0\r\n")
        protocol.data_received(b"x-trailer: t\r\n\r\n")
        await asyncio.sleep(0.05)
        return transport, seen

    transport, seen = asyncio.run(scenario())
    assert statuses(transport) == [b"200"] and not transport.closed
    assert seen.bodies == [b"a" * (4 * chunk)]


def test_what_follows_oversized_trailers_in_their_read_starts_no_request():
    async def scenario() -> tuple[RecordingTransport, Seen]:
        seen = Seen()
        protocol, transport = connected(echo_app(seen))
        protocol.data_received(CHUNKED_HEAD.replace(b"/echo", b"/early") + b"3\r\nabc\r\n")
        await asyncio.sleep(0.05)  # answered already
        trailer = b"x-trailer: " + b"t" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n"
        protocol.data_received(b"0\r\n" + trailer + CHUNKED_HEAD + LAST_CHUNK + b"\r\n")
        await settle(protocol)
        return transport, seen

    transport, seen = asyncio.run(scenario())
    assert statuses(transport) == [b"200"] and transport.closed
    assert seen.headers == [] and seen.bodies == []  # the request after the refusal never ran


def test_a_pipelined_request_after_oversized_trailers_cannot_clear_their_refusal():
    async def scenario() -> tuple[RecordingTransport, Seen]:
        seen, release = Seen(), asyncio.Event()
        protocol, transport = connected(echo_app(seen, release))
        protocol.data_received(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        oversized = b"x-trailer: " + b"t" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n"
        small = b"x-trailer: t\r\n\r\n"
        protocol.data_received(CHUNKED_HEAD + LAST_CHUNK + oversized + CHUNKED_HEAD + LAST_CHUNK + small)
        release.set()
        await settle(protocol)
        return transport, seen

    transport, seen = asyncio.run(scenario())
    assert statuses(transport) == [b"200", b"431"] and transport.closed
    assert seen.bodies == []


def test_trailers_are_kept_from_an_app_that_reads_its_headers_before_the_message_ends():
    """The app starts once the head is in, and may read its headers while the trailers still arrive:
    uvicorn appended each trailer line there as it came (an `x-api-key` trailer was then an API key)."""

    async def scenario() -> tuple[RecordingTransport, Seen]:
        seen = Seen()
        protocol, transport = connected(echo_app(seen))
        protocol.data_received(CHUNKED_HEAD + LAST_CHUNK + b"x-api-key: from-a-trailer\r\nx-more: t\r\n")
        await asyncio.sleep(0.05)  # the app has read its headers and waits for the body's end
        protocol.data_received(b"\r\n")
        await asyncio.sleep(0.05)
        return transport, seen

    transport, seen = asyncio.run(scenario())
    assert statuses(transport) == [b"200"]
    assert seen.headers == [["host", "transfer-encoding"]] and seen.bodies == [b"abc"]
