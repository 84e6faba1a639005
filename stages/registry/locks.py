"""One registry decision at a time per registered model.

MLflow has no atomic alias update, so two writers that read the aliases, decide and move them can
interleave: two `register`s both take `staging` against the same incumbents, or `promote` clears a
`staging` set a moment before. Every decision runs under `decision_lock`, one lock per registered model,
chosen by where the registry lives:

- SQLite: a file lock beside the database. Exclusive between processes of this machine, which is all
  that can open the file.
- PostgreSQL: a session advisory lock on the registry's own database. Exclusive between every client of
  that database; PostgreSQL releases it when the session ends, a `kill -9` included.
- A tracking server over REST (no database in reach): a lease, a tag on the registered model naming its
  owner and its expiry, written, then read back after a pause to check that no one else overwrote it.
  Exclusive as long as every writer's write reaches the server within LEASE_SETTLE_SECONDS of its
  read; a writer killed while holding it blocks others until the lease expires (LEASE_SECONDS).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from stages.registry.versions import Registry, RegistryError
from stages.tracking import SQLITE_PREFIX

LEASE_TAG = "registry_lease"
LEASE_SECONDS = 300.0
LEASE_SETTLE_SECONDS = 1.0
WAIT_SECONDS = 600.0


def _advisory_key(model_name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, per registered model."""
    digest = hashlib.sha256(f"fast-mlops registry {model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _file_lock(database: str, model_name: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(f"{database}.{model_name}.registry.lock")
    try:
        with lock.acquire(timeout=WAIT_SECONDS):
            yield
    except Timeout:
        raise RegistryError(
            f"another registry decision on {model_name} held its lock for {WAIT_SECONDS:.0f} s"
        ) from None


@contextmanager
def _advisory_lock(uri: str, model_name: str) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _advisory_key(model_name)}
            )
            try:
                yield
            finally:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _advisory_key(model_name)}
                )
    finally:
        engine.dispose()


def _lease(registry: Registry) -> dict[str, object] | None:
    from mlflow.exceptions import MlflowException

    try:
        text = registry.client.get_registered_model(registry.model_name).tags.get(LEASE_TAG)
    except MlflowException:  # no such registered model yet: nobody holds a lease on it
        return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


@contextmanager
def _lease_lock(registry: Registry) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(MlflowException):  # it exists already: the lease lives on it
        registry.client.create_registered_model(registry.model_name)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        held = _lease(registry)
        if held is None or float(str(held.get("expires", 0))) < time.time():
            lease = {"owner": owner, "expires": time.time() + LEASE_SECONDS}
            registry.client.set_registered_model_tag(registry.model_name, LEASE_TAG, json.dumps(lease))
            time.sleep(LEASE_SETTLE_SECONDS)
            confirmed = _lease(registry)
            if confirmed is not None and confirmed.get("owner") == owner:
                break
        if time.monotonic() > deadline:
            raise RegistryError(
                f"{registry.model_name}: the registry lease stayed taken for {WAIT_SECONDS:.0f} s"
            )
        time.sleep(LEASE_SETTLE_SECONDS)
    try:
        yield
    finally:
        current = _lease(registry)
        if current is not None and current.get("owner") == owner:
            registry.client.delete_registered_model_tag(registry.model_name, LEASE_TAG)


@contextmanager
def decision_lock(registry: Registry) -> Iterator[None]:
    """Hold the registry locks for the duration of one decision: the candidate model's, then (for a
    decision on the served model) the served model's. Always in that order, so two writers never hold
    one each. register takes the candidates' alone (`decision_lock(registry.candidates)`): it cannot
    write to the served model, and a promote or rollback it must wait for holds the candidates' too."""
    with _model_lock(registry.candidates):
        if registry.model_name == registry.candidate_name:
            yield
        else:
            with _model_lock(registry):
                yield


@contextmanager
def _model_lock(registry: Registry) -> Iterator[None]:
    """One registered model's lock, chosen by the store."""
    uri = registry.uri
    if uri.startswith(SQLITE_PREFIX):
        with _file_lock(uri.removeprefix(SQLITE_PREFIX), registry.model_name):
            yield
    elif uri.startswith(("postgresql", "postgres")):
        with _advisory_lock(uri, registry.model_name):
            yield
    else:
        with _lease_lock(registry):
            yield
