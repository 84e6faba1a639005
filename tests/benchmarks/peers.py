"""What this service is measured against: a bare FastAPI endpoint (the ceiling FastAPI itself allows), a raw
ASGI endpoint under this service's own uvicorn (the machine's ceiling) and, with --baseline REF, this
service as it was at a git ref, checked out in a temporary git worktree.

No `from __future__ import annotations` here: FastAPI must see the bare endpoint's request model itself,
not its name in a string."""

import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from tests.support.processes import REPO_ROOT


# ---------------------------------------------------------------------------------------------- bare FastAPI
def bare_app(settings: Any) -> Any:
    """FastAPI at its leanest: the same request model as the service, a constant answer."""
    from fastapi import FastAPI

    from api.loading import load_registered
    from api.registry import resolve_alias

    served = load_registered(settings, resolve_alias(settings))
    record_model = served.requests.record
    constant = {
        "label": served.labels[0],
        "probability": 0.5,
        "model_name": served.registry.name,
        "model_version": served.registry.version,
    }
    app = FastAPI()

    async def predict(record: record_model) -> dict[str, Any]:  # type: ignore[valid-type]
        return constant

    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/predict", predict, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    return app


def serve_bare(port: int) -> None:
    import uvicorn

    from api.settings import Settings

    uvicorn.run(
        bare_app(Settings()),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# ---------------------------------------------------------------------------------------------- raw ASGI
def ceiling_app(settings: Any) -> Any:
    """What any service on this machine, this Python and this uvicorn can reach at most: a raw ASGI app that
    reads the body and decodes it with the served model's own msgspec decoder, then answers a constant.
    No routing, no model, no counting, no request id: the cost of HTTP itself and of reading the record."""
    import msgspec

    from api.loading import load_registered
    from api.registry import resolve_alias

    served = load_registered(settings, resolve_alias(settings))
    decoder = served.requests.decoder
    decode = msgspec.json.decode if decoder is None else decoder.record  # no fast decoder: msgspec's own
    answer = json.dumps(
        {"label": served.labels[0], "probability": 0.5, "model_name": served.registry.name}
    ).encode()
    headers = [(b"content-length", b"%d" % len(answer)), (b"content-type", b"application/json")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status = 200 if scope["path"] == "/health" or decode(b"".join(chunks)) is not None else 422
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def serve_ceiling(port: int) -> None:
    """The raw ASGI app under the uvicorn options `python -m api` runs this service with (api/__main__.py):
    uvloop, the guarded httptools protocol of api/server.py, the same limits."""
    import uvicorn

    from api.__main__ import uvicorn_options
    from api.settings import Settings

    settings = Settings()
    options = uvicorn_options(settings, "127.0.0.1", port, "warning")
    uvicorn.run(**(options | {"app": ceiling_app(settings), "factory": False, "workers": 1}))


# ---------------------------------------------------------------------------------------------- baseline
@contextmanager
def baseline_checkout(ref: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """The repository at `ref` in a temporary git worktree, removed afterwards, and the environment its
    service needs on top of this one. It runs on this venv: `python -m api` with that worktree as its cwd
    imports that worktree's `api`. A package its serving set names that this venv lacks (one this branch
    has dropped) is installed for it alone, into a temporary directory on its PYTHONPATH."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    checkout = scratch / "repo"
    git = ["git", "-C", str(REPO_ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(checkout), ref], check=True, capture_output=True)
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", ref], check=True, capture_output=True, text=True
        ).stdout.strip()
        print(f"bench: baseline {ref} ({commit}) checked out in {checkout}")
        yield checkout, _missing_packages(checkout, scratch / "packages")
    finally:
        subprocess.run(
            [*git, "worktree", "remove", "--force", str(checkout)], check=False, capture_output=True
        )
        subprocess.run([*git, "worktree", "prune"], check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _missing_packages(checkout: Path, target: Path) -> dict[str, str]:
    project = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]
    missing = []
    for line in project.get("dependencies", []):
        requirement = Requirement(line)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            print(f"bench: the baseline wants {line}; it runs with this venv's {installed}")
    if not missing:
        return {}
    print(f"bench: installing for the baseline only, into {target}: {', '.join(missing)}")
    uv = shutil.which("uv") or "uv"
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            sys.executable,
            "--no-deps",
            "--target",
            str(target),
            *missing,
        ],
        check=True,
    )
    return {"PYTHONPATH": str(target)}
