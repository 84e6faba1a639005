"""Real processes for tests: free ports, waiting for HTTP, tools that must exist under CI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, installed_by: str = "make system-deps installs it") -> str:
    """Path of an executable, the venv's copy first (uv.lock's version), then PATH; skips locally but
    fails under CI=true, where a missing tool is a bug."""
    path = str(VENV_BIN / name) if (VENV_BIN / name).exists() else shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed ({installed_by})"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll until `url` answers 2xx; fail early with the log if the process died."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
        except urllib.error.HTTPError as error:
            with error:  # a not-yet-ready 503 holds a socket; close it or pytest reports it as leaked
                last_error = error
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            last_error = error
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last_error}")


def subprocess_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.update(overrides)
    return env


@contextmanager
def running(
    args: list[str], log_path: Path, ready_url: str | None = None, timeout: float = 60.0, **popen_kwargs
) -> Iterator[subprocess.Popen]:
    """Start a process in its own session, wait until ready, and always stop it (and its children)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen_kwargs
        )
        try:
            if ready_url:
                try:
                    wait_for_http(ready_url, timeout, process)
                except Exception as error:
                    raise RuntimeError(f"{args[0]} failed to start: {error}\n{tail(log_path)}") from error
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
