"""`python -m api --host H --port P`: uvicorn with uvloop + httptools and the limits of api/server.py, in
WORKERS processes (default 1) behind the one port.

Several workers run under uvicorn's own supervisor (`workers=`), which restarts one that dies; each loads
the model and follows the alias on its own, and the metrics go through prometheus_client's multiprocess
mode (api/telemetry.py). WORKERS wins over uvicorn's WEB_CONCURRENCY, which is ignored: every worker holds
a model of its own, so how many there are is the service's setting, not a platform's guess (Heroku-like
platforms set WEB_CONCURRENCY from the machine's size).

The process defaults (one OpenMP thread, MLflow's retries, no access log) are applied by importing `api`
and by create_app, for this and every other way of starting the service (api/process.py).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", help="default: HOST, else 127.0.0.1")
    parser.add_argument("--port", type=int, help="default: PORT, else 8000")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    parser.add_argument(
        "--baked-model",
        type=Path,
        help="serve this directory when it holds a model (MLmodel) and MODEL_URI is unset; else the registry",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from api.redaction import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # every logger's lines pass the root's handlers
    if args.baked_model and (args.baked_model / "MLmodel").is_file() and not os.environ.get("MODEL_URI"):
        os.environ["MODEL_URI"] = str(args.baked_model)

    import uvicorn

    from api.settings import Settings
    from api.telemetry import multiprocess_directory

    settings = Settings()  # after MODEL_URI is known: without it, MODEL_NAME and MODEL_ALIAS are required
    if os.environ.get("WEB_CONCURRENCY"):
        logging.getLogger(__name__).warning(
            "WEB_CONCURRENCY is ignored: WORKERS=%d worker(s) start", settings.workers
        )
    with multiprocess_directory(settings.workers):  # before any worker starts
        uvicorn.run(**uvicorn_options(settings, args.host, args.port, args.log_level))


def uvicorn_options(settings: Settings, host: str | None, port: int | None, log_level: str) -> dict[str, Any]:
    from api.server import PROTOCOL

    return {
        "app": "api.main:create_app",
        "factory": True,
        "host": host or settings.host,
        "port": port or settings.port,
        "loop": "uvloop",
        # httptools, with a deadline and a size limit for the request head (api/server.py). By name: the
        # config is pickled into each worker, and the protocol reads its limits from the settings there.
        "http": PROTOCOL,
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "limit_concurrency": settings.max_concurrent_requests,
        # Always a number: uvicorn reads WEB_CONCURRENCY only when it is given none.
        "workers": settings.workers,
        "log_level": log_level,
    }


if __name__ == "__main__":
    main()
