"""Reading a request body within the service's limits: its size, its time, and a client that leaves.

A declared Content-Length over MAX_BODY_BYTES is refused before reading, and a body without one (chunked)
is refused as soon as it grows past the limit, so neither is ever held whole. The whole body must arrive
within REQUEST_READ_TIMEOUT_SECONDS of the head (the app starts as the head ends): a total deadline, not
an idle timeout, so a client that trickles one byte a second is cut off too, with a 408 that closes the
connection. A client that disconnects mid-body is a 499 (api/errors.py), not a server error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from api.errors import BodyTooLarge, ClientDisconnected, RequestTimeout


async def read_request_body(request: Request, limit: int, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            return await read_body(request.stream(), request.headers.get("content-length"), limit)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise ClientDisconnected("the client disconnected before sending the whole body") from None


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The body from its chunks (e.g. `request.stream()`); raises BodyTooLarge past `limit` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise BodyTooLarge(f"the body is {content_length} bytes; the limit is {limit}")
    received, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
        received.append(chunk)
    return b"".join(received)
