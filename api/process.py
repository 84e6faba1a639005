"""Process-wide defaults of the service, in one place that every way of starting it goes through.

`python -m api`, `uvicorn api.main:create_app --factory` and the image all import the `api` package
first, and its `__init__` applies `ENVIRONMENT` before anything imports numpy, xgboost or mlflow (the
thread count is read once, when the OpenMP runtime loads). `setdefault`: a value the environment already
has wins. The access log is uvicorn's to configure, so `create_app` switches it off instead
(`silence_access_log`).
"""

from __future__ import annotations

import logging
import os

ENVIRONMENT = {
    # One thread per process. On a small box, several threads per tiny request only contend with each
    # other and with the event loop (20-40 ms latency spikes on 2 cores).
    "OMP_NUM_THREADS": "1",
    # The service's own loop owns retries and backoff. MLflow's default (7 retries, exponential backoff)
    # would make one attempt against a dead registry last minutes and hide every try from the log.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
ACCESS_LOGGER = "uvicorn.access"


def apply_environment() -> None:
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def silence_access_log() -> None:
    """No line per request: http_requests_total counts them, and formatting one costs as much as a
    prediction. Done here rather than with uvicorn's `--no-access-log` so that no start path can forget it.
    uvicorn logs a request only when this logger has a handler (it checks per connection, after the app
    is built), so removing them, as its own `access_log=False` does, skips even building the message."""
    logger = logging.getLogger(ACCESS_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = False


def describe() -> str:
    """The defaults as this process sees them, for the startup log."""
    values = " ".join(f"{name}={os.environ.get(name)}" for name in ENVIRONMENT)
    access = "on" if logging.getLogger(ACCESS_LOGGER).hasHandlers() else "off"
    return f"{values}; access log {access}"


def native_threads() -> str:
    """The thread pools of the native libraries loaded so far (OpenMP, BLAS), as threadpoolctl reads them
    from the libraries themselves: the proof that OMP_NUM_THREADS took effect."""
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    pools = sorted({(str(pool["user_api"]), int(pool["num_threads"])) for pool in threadpool_info()})
    return ", ".join(f"{api} threads {count}" for api, count in pools) or "no native thread pools"
