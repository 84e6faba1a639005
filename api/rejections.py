"""What a bad body costs: bounded, whatever the client sends.

A 1.7 MB body with 150,000 unknown keys once drew a 15 MB 422 after 1.4 s of event-loop time, because
pydantic built one error per key and every error was written back. Three bounds keep a bad request cheap:

- an object with more keys than a record can have plus MAX_VALIDATION_ERRORS is hopeless: its unknown
  keys are reported from a plain decode (msgspec, in C), and pydantic never sees it;
- at most MAX_VALIDATION_ERRORS issues are reported, with the count of the rest (`errors_omitted`);
- the answer stays under MAX_REJECTION_BYTES, however long the keys and values are.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import msgspec
from pydantic_core import ErrorDetails, to_json

from api.errors import RequestInvalid

MAX_ECHOED_INPUT = 200
MAX_REJECTION_BYTES = 64 * 1024
# More than any MAX_VALIDATION_ERRORS worth setting: past these, unknown keys are only counted.
MAX_ISSUES_KEPT = 1000
EXTRA_FORBIDDEN = {"type": "extra_forbidden", "msg": "Extra inputs are not permitted"}
Location = tuple[str | int, ...]


def issue(error: ErrorDetails) -> dict[str, Any]:
    """A pydantic error as a 422 issue: its input echoed only when it is a short scalar, its key names cut
    short (a key can be a megabyte long)."""
    return _issue(error["type"], error["loc"], error["msg"], error.get("input"))


def _issue(kind: str, loc: Location, msg: str, value: Any) -> dict[str, Any]:
    located: dict[str, Any] = {"type": kind, "loc": ["body", *map(_short, loc)], "msg": msg}
    if (
        value is None
        or isinstance(value, bool | int | float)
        or (isinstance(value, str) and len(value) <= MAX_ECHOED_INPUT)
    ):
        located["input"] = value  # dicts, lists and long strings (a whole body) are not echoed back
    return located


def _short(part: str | int) -> str | int:
    if isinstance(part, str) and len(part) > MAX_ECHOED_INPUT:
        return part[:MAX_ECHOED_INPUT] + "…"
    return part


def rejection(issues: list[dict[str, Any]], total: int, max_errors: int) -> RequestInvalid:
    """The 422 for a body with `total` errors, of which `issues` are the first: at most `max_errors` of
    them, fewer if the answer would outgrow MAX_REJECTION_BYTES."""
    reported = issues[:max_errors]
    # Each issue is bounded (short inputs, short keys, pydantic's messages), so this rarely drops any.
    while len(reported) > 1 and len(to_json(reported)) > MAX_REJECTION_BYTES - 100:
        reported = reported[: len(reported) // 2]
    return RequestInvalid(reported, errors_omitted=total - len(reported))


def key_bound(fields: int, max_errors: int) -> int:
    """The most keys an object may have and still reach pydantic: every field, and up to `max_errors`
    extra. Beyond that the body has more errors than are reported, whatever the other keys hold."""
    return fields + max_errors


def oversized_objects(body: bytes, bound: int, batch: bool) -> list[tuple[Location, dict[str, Any]]] | None:
    """The objects of a body with more than `bound` keys: the record, or the batch and its records, with
    where they are. None when the body is not JSON at all (pydantic then says why, in one error)."""
    try:
        decoded = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec reports invalid UTF-8 as the latter
        return None
    return list(_oversized(decoded, bound, batch))


def _oversized(decoded: Any, bound: int, batch: bool) -> Iterator[tuple[Location, dict[str, Any]]]:
    # Only where pydantic iterates keys: the top object and, in a batch, each record. Deeper objects are a
    # field's wrong type, one error each however many keys they hold.
    if not isinstance(decoded, dict):
        return
    if len(decoded) > bound:
        yield (), decoded
        return
    records = decoded.get("records") if batch else None
    if isinstance(records, list):
        for index, record in enumerate(records):
            if isinstance(record, dict) and len(record) > bound:
                yield ("records", index), record


def unknown_keys(
    objects: list[tuple[Location, dict[str, Any]]], allowed: Collection[str], allowed_top: Collection[str]
) -> tuple[list[dict[str, Any]], int]:
    """The first MAX_ISSUES_KEPT issues and the count of all unknown keys of these objects: `allowed_top`
    names the top object's keys, `allowed` each record's."""
    issues: list[dict[str, Any]] = []
    total = 0
    for loc, value in objects:
        known = allowed_top if loc == () else allowed
        for key, item in value.items():
            if key not in known:
                total += 1
                if len(issues) < MAX_ISSUES_KEPT:
                    issues.append(_issue(EXTRA_FORBIDDEN["type"], (*loc, key), EXTRA_FORBIDDEN["msg"], item))
    return issues, total
