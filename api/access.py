"""Who may call what, checked before a route runs: API keys (401) and the body's media type (415).

Keys are optional. API_KEYS_FILE names a file of key hashes, one a line: the lowercase hex SHA-256 of a
key's UTF-8 bytes (`make api-key` writes one), so the file holds nothing worth stealing. Blank and `#`
lines are ignored; any other line stops start-up, because a half-read key file would lock out keys or
let in the wrong ones. A file that is set but missing or empty fails closed: every protected request is
refused. The file is re-read when it changes, at most once a second.

A presented key is hashed, and its hash compared with every stored one by `hmac.compare_digest`, so
neither the comparison nor the loop ends early at the first differing byte or matching key.

The media type is checked because a browser sends a "simple" cross-site POST (text/plain, form data)
without asking first: only `application/json` (with parameters such as charset) reaches a POST route.

These checks run inside the request-metrics middleware (api/instrumentation.py), which has already
found the request's route: a middleware of their own cost about 6% of a /predict.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Collection
from pathlib import Path

from api.errors import ApiError
from api.settings import Settings

log = logging.getLogger(__name__)

HASH_LINE = re.compile(r"[0-9a-f]{64}")
RECHECK_SECONDS = 1.0
JSON_MEDIA_TYPE = b"application/json"
# The routes API_KEYS_FILE guards: what predicts, takes feedback, or says which model serves.
KEYED_ROUTES = ("/predict", "/predict/batch", "/feedback", "/model")
METRICS_ROUTE = "/metrics"
FEEDBACK_ROUTE = "/feedback"


class InvalidKeyFile(Exception):
    """A key file line that is neither a hash, blank nor a comment."""


class Unauthorized(ApiError):
    status_code = 401

    def __init__(self, detail: str, invalid_token: bool) -> None:
        super().__init__(detail)
        challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
        self.headers = {"WWW-Authenticate": challenge}


class UnsupportedMediaType(ApiError):
    status_code = 415


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hashes(text: str, source: str) -> frozenset[str]:
    hashes = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not HASH_LINE.fullmatch(stripped):
            raise InvalidKeyFile(
                f"{source}:{number} is not a lowercase hex SHA-256 of a key (nor blank, nor a # comment)"
            )
        hashes.add(stripped)
    return frozenset(hashes)


class KeyFile:
    """The key hashes of one file, re-read when its size, inode or modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._hashes: frozenset[str] = frozenset()
        self._next_check = 0.0
        self._read(first=True)

    def _read(self, first: bool = False) -> None:
        try:
            stat = os.stat(self.path)
        except OSError:
            signature = None
        else:
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature and not first:
            return
        self._signature = signature
        try:
            self._hashes = parse_key_hashes(self.path.read_text(), str(self.path))
        except OSError as error:
            self._hashes = frozenset()
            log.warning(
                "API key file %s unreadable (%s): every protected request is refused", self.path, error
            )
            return
        except InvalidKeyFile:
            self._hashes = frozenset()
            if first:
                raise
            log.error("API key file %s became invalid: every protected request is refused", self.path)
            return
        if not self._hashes:
            log.warning("API key file %s holds no key: every protected request is refused", self.path)
        elif not first:
            log.info("API key file %s re-read: %d keys", self.path, len(self._hashes))

    def hashes(self) -> frozenset[str]:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RECHECK_SECONDS
            self._read()
        return self._hashes

    def admits(self, presented: str) -> bool:
        digest = key_hash(presented)
        admitted = False
        for stored in self.hashes():
            admitted |= hmac.compare_digest(digest, stored)
        return admitted


class Gate:
    """What refuses a request before its route runs: `refusal(handler, method, headers)` is None or the
    ApiError to answer with. `protected` maps a route template to the key file that guards it;
    `json_routes` are the templates of the routes that take a POST (a POST elsewhere is the router's 404
    or 405, not a 415)."""

    def __init__(self, protected: dict[str, KeyFile], json_routes: Collection[str] = ()) -> None:
        self.protected = protected
        self.json_routes = frozenset(json_routes)

    def refusal(self, handler: str, method: str, headers: list[tuple[bytes, bytes]]) -> ApiError | None:
        keys = self.protected.get(handler)
        takes_json = method == "POST" and handler in self.json_routes
        if keys is None and not takes_json:
            return None
        authorization = content_type = None
        for name, value in headers:  # ASGI gives header names lowercased
            if name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
        if keys is not None:
            refused = _unauthorized(keys, authorization)
            if refused is not None:
                return refused
        if takes_json and not _is_json(content_type):
            return UnsupportedMediaType("the body must be application/json")
        return None


def _unauthorized(keys: KeyFile, authorization: bytes | None) -> Unauthorized | None:
    if authorization is None:
        return Unauthorized("this route needs an API key: Authorization: Bearer <key>", invalid_token=False)
    scheme, _, key = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return Unauthorized("the Authorization header must be: Bearer <key>", invalid_token=False)
    if not keys.admits(key.strip()):
        return Unauthorized("the API key is not valid", invalid_token=True)
    return None


def _is_json(content_type: bytes | None) -> bool:
    if content_type == JSON_MEDIA_TYPE:  # what nearly every client sends: no parsing
        return True
    if content_type is None:
        return False
    return content_type.partition(b";")[0].strip().lower() == JSON_MEDIA_TYPE


def gate_of(settings: Settings, json_routes: Collection[str]) -> Gate:
    """The Gate these settings ask for; raises InvalidKeyFile (start-up stops) on a malformed key file."""
    protected: dict[str, KeyFile] = {}
    if settings.api_keys_file is not None:
        keys = KeyFile(settings.api_keys_file)
        protected.update(dict.fromkeys(KEYED_ROUTES, keys))
    if settings.metrics_api_keys_file is not None:
        protected[METRICS_ROUTE] = KeyFile(settings.metrics_api_keys_file)
    if settings.feedback_api_keys_file is not None:  # feedback becomes training data: its own keys
        protected[FEEDBACK_ROUTE] = KeyFile(settings.feedback_api_keys_file)
    return Gate(protected, json_routes)
