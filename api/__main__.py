"""`python -m api --host H --port P`: one process, uvicorn with uvloop + httptools and the limits of
api/server.py.

The process defaults (one OpenMP thread, MLflow's retries, no access log) are applied by importing `api`
and by create_app, for this and every other way of starting the service (api/process.py).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


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

    from api.server import guarded_protocol
    from api.settings import Settings

    settings = Settings()  # after MODEL_URI is known: without it, MODEL_NAME and MODEL_ALIAS are required
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        loop="uvloop",
        # httptools, with a deadline and a size limit for the request head (api/server.py).
        http=guarded_protocol(settings.request_read_timeout_seconds, settings.max_header_bytes),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        limit_concurrency=settings.max_concurrent_requests,
        workers=1,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
