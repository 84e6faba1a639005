"""`python -m api --host H --port P`: one process, uvloop + httptools, no access log."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

# Before numpy or xgboost load: one thread per process. On a small box, several threads per tiny request
# only contend with each other and with the event loop.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The service's own loop owns retries and backoff. MLflow's default (7 retries, exponential backoff) would
# make one attempt against a dead registry last minutes and hide every try from the log.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    from api.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
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
    if args.baked_model and (args.baked_model / "MLmodel").is_file() and not os.environ.get("MODEL_URI"):
        os.environ["MODEL_URI"] = str(args.baked_model)

    import uvicorn

    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        workers=1,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
