"""Reading a request body within the service's limits.

Only the size for now: a declared Content-Length over MAX_BODY_BYTES is refused before reading, and a body
without one (chunked) is refused as soon as it grows past the limit, so neither is ever held whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request

from api.errors import BodyTooLarge


async def read_request_body(request: Request, limit: int) -> bytes:
    return await read_body(request.stream(), request.headers.get("content-length"), limit)


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
