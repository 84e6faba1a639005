"""Reading a request body within the service's limits: its size, its time, and a client that leaves.

A declared Content-Length over MAX_BODY_BYTES is refused before reading, and a body without one (chunked)
is refused as soon as it grows past the limit, so neither is ever held whole. The whole body must arrive
within REQUEST_READ_TIMEOUT_SECONDS of the head (the app starts as the head ends): a total deadline, not
an idle timeout, so a client that trickles one byte a second is cut off too, with a 408 that closes the
connection. A client that disconnects mid-body is a 499 (api/errors.py), not a server error.

The deadline is kept by one reaper task per event loop, which cancels the reads that overran it, rather
than by a timer per request: `asyncio.timeout` measured 6.2 µs a request on uvloop (3% of a /predict),
the reaper's bookkeeping 0.6 µs. The price is precision: a read is cut off up to a tick late.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from api.errors import BodyTooLarge, ClientDisconnected, RequestTimeout

MAX_TICK_SECONDS = 0.25


class BodyDeadlines:
    """The body reads in flight and their deadlines; a reaper task cancels the ones that overran."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(MAX_TICK_SECONDS, timeout / 4)
        self._reading: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def read(self, request: Request, limit: int) -> bytes:
        """A Starlette request's body."""
        return await self.received(request.receive, request.headers.get("content-length"), limit)

    async def received(self, receive: Receive, content_length: str | None, limit: int) -> bytes:
        """The body from the ASGI `receive` itself, for a handler that has no Request (api/lane.py)."""
        task = asyncio.current_task()
        assert task is not None  # always inside a request's task
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the first request on this loop (tests run apps on several)
            self._loop, self._reaper = loop, loop.create_task(self._reap(), name="body-deadlines")
        self._reading[task] = loop.time() + self.timeout
        try:
            return await receive_body(receive, content_length, limit)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # a real cancellation (shutdown), not ours
            task.uncancel()
            raise RequestTimeout(f"the body did not arrive within {self.timeout:g} s") from None
        except ClientDisconnect:
            raise ClientDisconnected("the client disconnected before sending the whole body") from None
        finally:
            del self._reading[task]
            self._expired.discard(task)

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            for task, deadline in list(self._reading.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def stop(self) -> None:
        self._loop = None
        if self._reaper is not None and not self._reaper.done():
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper


async def receive_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The body from its `http.request` messages; raises BodyTooLarge past `limit` bytes and
    ClientDisconnect on an `http.disconnect` before its end, as Starlette's `Request.stream()` does."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise BodyTooLarge(f"the body is {content_length} bytes; the limit is {limit}")
    received: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
            if not message.get("more_body", False):
                if not received:  # nearly every body arrives in one message: no copy of it
                    return chunk
                received.append(chunk)
                return b"".join(received)
            received.append(chunk)
        elif kind == "http.disconnect":
            raise ClientDisconnect()
