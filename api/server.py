"""The HTTP server: uvicorn's httptools protocol with the two limits uvicorn lacks, for the request head.

uvicorn 0.54 has a keep-alive timeout (`timeout_keep_alive`) and a concurrency limit
(`limit_concurrency`, 503), but nothing bounds the head of a request: a client that opens a connection and
sends half a header, or one byte a second, holds it forever (1,000 of them exhausted a 256-file limit),
and httptools gathers a header however long it grows, at a cost that grows faster than its size (a
100 MB header held the event loop for 5.4 s). This protocol adds:

- a total deadline for the head, REQUEST_READ_TIMEOUT_SECONDS from the connection's start or from the end
  of the previous response on a kept-alive one: 408, then the connection closes. The body has the same
  deadline from the end of the head, kept by api/bodies.py;
- MAX_HEADER_BYTES for the head: 431, then the connection closes, before httptools holds more than one
  read past the limit. A head is counted from the end of the previous request, so that one pipelined
  behind a request still being answered is bounded too: past the limit, reading stops (and what still
  arrives of that head is dropped) until every answer owed is sent, and the 431 follows them. One that began in the same read as that end is measured exactly
  when it completes. The trailer section of a chunked body is a head too (httptools gathers it the same
  way: 1 MiB of trailer in 1 KiB reads held the loop for 0.15 s, and the cost grows with the square of its
  size), held to the same limit from the read after its last chunk and measured exactly at the message's
  end; one over the limit is a 431 that closes, in its turn like a head's (or a close, once its request
  has its answer), its request never sees its body end, and nothing after it in the same read starts a
  request. Trailers are not headers (RFC 9110, 6.5.1) and are never merged into the request's: uvicorn appends
  them to `scope["headers"]` as they arrive, which the app may be reading already, so they go to a list of
  their own and are dropped;
- the same deadline for the rest of a body after an early answer (a 401, a 404, a 413 on its declared
  length): the app is done with it and api/bodies.py no longer keeps one, and uvicorn's keep-alive timer
  restarts at every read, so a body trickled after its answer held the connection forever. Past it the
  connection closes with nothing written, as no answer is owed, and is counted in
  `http_body_timeouts_total`; once it has ended, uvicorn's keep-alive timer (which its reads cancelled)
  runs again, so the idle connection closes silently, as after any answer.

And it sends a response's head together with its body when the body's length is known (`HeadWithBody`):
uvicorn writes each to the socket as the app sends it, two send() calls and often two TCP segments for
an answer of 200 bytes, where one does (measured: about 4 µs of the server's CPU per request, and as much
of the client's).

It also answers uvicorn's own concurrency refusal (`limit_concurrency`, MAX_CONCURRENT_REQUESTS) as the app
answers its errors, not with uvicorn's plain-text 503: an ErrorResponse body with a `request_id`, the
`X-Request-ID` header and `Retry-After`. Every refusal here names its request like every other answer
(api/request_ids.py): the client's id when the head got far enough to carry a well-formed one.

The deadline is kept by one reaper task per event loop that looks at every connection's head start a few
times a second, not by a timer per request (a timer measured 2.5 µs a request). Both refusals are counted
in `http_connection_refusals_total{reason}`, from the telemetry the app's lifespan hands over.

This is a guard for the process itself, not a front door: a production deployment puts a reverse proxy
(nginx, Envoy, a cloud load balancer) with the same limits in front of it (README, "Hardening").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api import request_ids
from api.settings import Settings

MAX_TICK_SECONDS = 0.25
HEAD_TIMEOUT = "head_timeout"
HEADERS_TOO_LARGE = "headers_too_large"
CONCURRENCY_LIMIT = "concurrency_limit"
REASONS = (HEAD_TIMEOUT, HEADERS_TOO_LARGE, CONCURRENCY_LIMIT)
BUSY_DETAIL = "the server is at its limit of concurrent requests (MAX_CONCURRENT_REQUESTS): retry shortly"
_STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
}


SIZED = b"\r\ncontent-length: "  # as uvicorn writes the header: its name lowercased
INTERIM = b"HTTP/1.1 1"  # 100 Continue: the client waits for it before it sends the body


class HeadWithBody:
    """A request cycle's transport that holds the response head until the first body write and sends both
    in one write. Only a head with a Content-Length is held, and never a HEAD request's (no body follows
    it): a chunked (streaming) response's head goes out at once, as its chunks may be slow to come. An interim 100 Continue goes out at once too. Closing sends
    what is held first. Everything else is the connection's transport."""

    __slots__ = ("_head_sent", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._head_sent = False

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif self._head_sent or data.startswith(INTERIM):
            self._transport.write(data)
        else:  # the response's head: its first write that is not an interim one
            self._head_sent = True
            if SIZED in data:
                self._held = data
            else:
                self._transport.write(data)

    def close(self) -> None:
        if self._held is not None:
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's `http=`, given by name (`PROTOCOL`). With WORKERS > 1 uvicorn pickles its config into
    each worker it spawns, and a class made at run time does not pickle (pickle finds a class by its
    name): this one is imported in the worker instead, and reads its limits, the head's deadline and size,
    once per process from the settings of the environment the worker inherits
    (REQUEST_READ_TIMEOUT_SECONDS, MAX_HEADER_BYTES): the same the parent validated before it started."""

    head_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 16 * 1024
    limits_read: ClassVar[bool] = False
    _reapers: ClassVar[dict[asyncio.AbstractEventLoop, asyncio.Task[None]]] = {}

    # The loop time the current head's deadline runs from (None while a request is being served).
    head_started: float | None = None
    # Whether that deadline is for the rest of a body whose request was answered before it ended.
    discarding = False
    # Whether reads now are the next head's (from the end of the previous request's message), its bytes
    # so far, whether the current read was counted for it, and whether it began in a read that was not
    # (pipelined behind the previous request's end): then only its exact size tells.
    head_counted = True
    head_bytes = 0
    read_counted = False
    head_unmeasured = False
    # A chunked body's trailer section: whether the chunk being read carried data (the last one carries
    # none, and its trailers follow), the list they go to instead of the request's headers, and their
    # bytes so far.
    chunk_has_data = False
    chunk_parsed = False  # whether the current read held a chunk's header or data
    trailers: list[tuple[bytes, bytes]] | None = None  # where uvicorn's on_header puts them, apart
    trailer_bytes = 0
    trailing: Any = None  # the request cycle those trailers belong to
    # A refusal is decided: what follows it in the read being parsed starts no request and feeds none.
    stopped = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.limits_read:
            _read_limits(type(self))
        super().connection_made(transport)
        self.head_started, self.head_counted, self.head_bytes = self.loop.time(), True, 0
        reaper = self._reapers.get(self.loop)
        if reaper is None or reaper.done():
            self._reapers[self.loop] = self.loop.create_task(
                _reap(self.connections, self.head_timeout, self.loop), name="head-deadlines"
            )

    def data_received(self, data: bytes) -> None:
        # The checks are written out here, not called: this runs for every read of every request.
        limit = self.max_header_bytes
        if self.trailer_bytes > limit or (self.head_counted and self.head_bytes > limit):
            # A head or trailers over the limit behind an answer still owed, whose 431 follows that answer;
            # reading resumed meanwhile (the app's every `receive()` resumes it in uvicorn). The rest is not
            # kept: it is refused whatever it holds.
            self.flow.pause_reading()
            return
        self.read_counted = counted = self.head_counted
        if counted:
            self.head_bytes += len(data)
        after_chunk_header = self.trailers is not None and not self.chunk_has_data
        self.chunk_parsed = False
        super().data_received(data)
        if after_chunk_header and not self.chunk_parsed and self.trailers is not None:
            # A whole read right after a chunk's header held no chunk data (a chunk with any is data from
            # its first byte on), no other chunk and not the message's end: it was the last chunk's
            # trailers. (The read the trailers began in is measured at the message's end.)
            self.trailer_bytes += len(data)
        if self.trailer_bytes > limit or (self.head_counted and self.head_bytes > limit):
            self._refuse_in_turn()

    def _refusal_owed(self) -> bool:
        limit = self.max_header_bytes
        return (self.head_counted and self.head_bytes > limit) or self.trailer_bytes > limit

    def _refuse_in_turn(self) -> None:
        """Refuse what went past the limit once no answer owed before it is still being sent: until then
        reading stays paused, and on_response_complete comes back here."""
        if self.trailer_bytes > self.max_header_bytes:
            self.stopped = True
            cycle = self.trailing
            if any(queued is cycle for queued, _ in self.pipeline) or (
                cycle.response_started and not cycle.response_complete
            ):  # an answer owed goes first: an earlier request's, or its own, still being sent
                self.flow.pause_reading()
            elif cycle.response_complete:  # answered before its body ended: the rest is refused by closing
                self.trailer_bytes = 0
                self.transport.close()
                self._count(HEADERS_TOO_LARGE)
            else:
                self.refuse(431, HEADERS_TOO_LARGE, self._too_large())
        elif self._answering():  # the answer owed goes first: the rest waits in the socket till then
            self.flow.pause_reading()
        else:
            self.refuse(431, HEADERS_TOO_LARGE, self._too_large())

    def _answering(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_unmeasured = not self.read_counted
        if self.timeout_keep_alive_task is not None:  # armed in this read, by on_message_complete
            self._unset_keepalive_if_required()

    def on_headers_complete(self) -> None:
        if self.stopped:
            return
        # The read that completed the head may hold body bytes too, and a pipelined head may have begun in
        # a read counted for the request before it: only then is the head itself measured.
        self.head_started, self.head_counted = None, False
        previous = self.cycle
        if (
            self.head_bytes > self.max_header_bytes or self.head_unmeasured
        ) and self._head_size() > self.max_header_bytes:
            self._run_instead(self._answer_431)
        elif self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):  # uvicorn's own test, on which it would run its plain-text 503
            self._run_instead(self._answer_busy)
        else:
            super().on_headers_complete()
        cycle = self.cycle
        # Only a cycle this head started (an upgrade to a WebSocket starts none), and never a HEAD
        # request's: its answer has a Content-Length but no body write to send the head with.
        if cycle is not None and cycle is not previous and cycle.scope["method"] != "HEAD":
            cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]

    def _run_instead(self, refusal: Any) -> None:
        """Let uvicorn start the request's cycle as usual, through an app that only refuses it."""
        app, limit = self.app, self.limit_concurrency
        self.app, self.limit_concurrency = refusal, None
        try:
            super().on_headers_complete()
        finally:
            self.app, self.limit_concurrency = app, limit

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal_owed():  # pipelined or still arriving, over the limit: its turn may have come
            self._refuse_in_turn()  # or pauses again the reading uvicorn has just resumed
            return
        self._arm_if_idle()

    def on_chunk_header(self) -> None:
        # httptools reports a chunk's header (its size is not given) once its line is read; the body of a
        # chunk with data follows at once (on_body), and for the last chunk, the trailer section does.
        if self.stopped:
            return
        self.chunk_has_data, self.chunk_parsed = False, True
        # uvicorn appends every header line to `self.headers`, the request's own list (its scope's), trailers
        # too, as each arrives: from here on they go to a list of their own, so the app never sees one
        # (it may start, and read its headers, before the message ends).
        self.headers = self.trailers = []
        self.trailing = self.cycle

    def on_body(self, body: bytes) -> None:
        if self.stopped:
            return
        self.chunk_has_data = self.chunk_parsed = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.stopped:
            return
        if self.trailers is not None and self._end_trailers():
            # Over the limit: the request never learns that its body ended; it is refused in its turn, and
            # sees the client disconnect.
            self._refuse_in_turn()
            return
        super().on_message_complete()
        # What follows is the next head, pipelined in the rest of this read or in the next ones.
        self.head_counted, self.head_bytes, self.read_counted = True, 0, False
        # A response sent before its request's body ended (a 413 on Content-Length, a 404 that never
        # reads): the next head starts only now, not at the response, or the body's remaining bytes
        # would be counted as a head (a stray 431 on a kept-alive connection, or a 408 mid-upload).
        if self.cycle is not None and self.cycle.response_complete:
            self._arm_if_idle(body_done=True)
            # uvicorn armed its keep-alive timer at the answer, and the body's reads since cancelled it: arm
            # it again, or an idle connection waits for the head deadline's 408 instead of its silent close.
            # (on_message_begin cancels it if the next request began in this same read.)
            if not self.pipeline and self.timeout_keep_alive_task is None and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def _end_trailers(self) -> bool:
        """Measure the trailer section exactly (its first read was not counted), and drop it: whether it
        is over the limit."""
        trailers, self.trailers = self.trailers or [], None
        size = sum(len(name) + len(value) + 4 for name, value in trailers)
        self.trailer_bytes = size if size > self.max_header_bytes else 0
        return size > self.max_header_bytes

    def _arm_if_idle(self, body_done: bool = False) -> None:
        """Start the next head's deadline once the connection waits for one: the response is sent, the
        request's body has all arrived, and no pipelined request was started instead (its bytes are
        counted from the end of the request's message, on_message_complete); or, once the response is sent
        while the body is still arriving, the same deadline for the rest of that body."""
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.response_complete:
            return
        # uvicorn leaves more_body set once it has answered: only `body_done` says the body has ended.
        # Until then the deadline runs for the rest of it, which the server reads only to discard.
        self.discarding = cycle.more_body and not body_done
        self.head_started = self.loop.time()

    def expire(self, detail: str) -> None:
        """The deadline has passed: a 408 for a head, or for the rest of an answered body a close."""
        if not self.discarding:
            self.refuse(408, HEAD_TIMEOUT, detail)
            return
        self.head_started, self.discarding, self.stopped = None, False, True
        if not self.transport.is_closing():
            self.transport.close()
            telemetry = self.app_state.get("telemetry")
            if telemetry is not None:
                telemetry.body_timeouts.inc()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large(self) -> str:
        return f"the request head exceeds {self.max_header_bytes} bytes"

    async def _answer_431(self, scope: Any, receive: Any, send: Any) -> None:
        await _send_error(send, 431, self._too_large(), request_ids.from_headers(scope["headers"]))
        self._count(HEADERS_TOO_LARGE)

    async def _answer_busy(self, scope: Any, receive: Any, send: Any) -> None:
        self.logger.warning("Exceeded concurrency limit.")  # uvicorn's own line, kept for its readers
        request_id = request_ids.from_headers(scope["headers"])
        await _send_error(send, 503, BUSY_DETAIL, request_id, [(b"retry-after", b"1")])
        self._count(CONCURRENCY_LIMIT)

    def refuse(self, status: int, reason: str, detail: str) -> None:
        """Answer `status` with an ErrorResponse body and close, mid-head; nothing of the request runs (or,
        for its trailers, nothing more of it: it sees the client disconnect)."""
        self.head_started, self.head_counted, self.trailer_bytes = None, False, 0
        self.trailers, self.stopped = None, True
        if self.transport.is_closing():
            return
        request_id = request_ids.new_id()  # a head cut short carries no header that can be trusted
        body = json.dumps({"detail": detail, "request_id": request_id}).encode()
        self.transport.write(
            _STATUS_LINES[status]
            + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nx-request-id: "
            + request_id.encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()
        self._count(reason)

    def _count(self, reason: str) -> None:
        telemetry = self.app_state.get("telemetry")  # what the app's lifespan handed over
        if telemetry is not None:
            telemetry.connection_refusals.labels(reason).inc()


async def _send_error(
    send: Any, status: int, detail: str, request_id: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """An ErrorResponse answer that closes the connection."""
    body = json.dumps({"detail": detail, "request_id": request_id}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (request_ids.HEADER_KEY, request_id.encode()),
        (b"connection", b"close"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _reap(connections: set[Any], head_timeout: float, loop: asyncio.AbstractEventLoop) -> None:
    """Every tick, expire the connections whose head (or answered body) has taken longer than
    `head_timeout`."""
    tick = min(MAX_TICK_SECONDS, head_timeout / 4)
    detail = f"the request head did not arrive within {head_timeout:g} s"
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(tick)
            deadline = loop.time() - head_timeout
            for connection in list(connections):
                started = getattr(connection, "head_started", None)
                if started is not None and started <= deadline:
                    connection.expire(detail)


PROTOCOL = f"{__name__}:{GuardedHttpToolsProtocol.__name__}"


def _read_limits(protocol: type[GuardedHttpToolsProtocol]) -> None:
    settings = Settings()
    protocol.head_timeout = settings.request_read_timeout_seconds
    protocol.max_header_bytes = settings.max_header_bytes
    protocol.limits_read = True
