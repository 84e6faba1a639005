"""The retrain trigger: Alertmanager's webhook in, GitHub's `repository_dispatch` out.

`python -m api.retrain_dispatch [--host H] [--port P]` runs a small FastAPI app of its own, which the
prediction service never imports. Alertmanager POSTs its webhook JSON to `/alerts`; of it, only the
firing `FeatureDrift` and `OnlineQualityDrop` alerts count. A group that already caused a dispatch does
not cause another while it keeps firing (its group key is remembered until Alertmanager reports it
resolved), and there is at most one dispatch per RETRAIN_MIN_INTERVAL_SECONDS, whichever group asks. The
dispatch is `POST {GITHUB_API_URL}/repos/{GITHUB_REPOSITORY}/dispatches` with `event_type: retrain` and
the alerts in `client_payload`, which starts `.github/workflows/retrain.yml`.

The state (when the last dispatch went out, which groups caused one) is written to
RETRAIN_DISPATCH_STATE_FILE after every change, so that it survives a restart; without that variable it
lives in memory only. Without RETRAIN_DISPATCH_TOKEN or GITHUB_REPOSITORY the receiver takes alerts and
dispatches nothing (it says so in /health and in its log), so that the stack runs without a GitHub token.

Bodies are bounded (MAX_BODY_BYTES, MAX_ALERTS); a bad one is a 4xx with the reason. GitHub's failure is
a 502, so that Alertmanager retries. The token is sent to GitHub and nowhere else: never logged, never
in an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("api.retrain_dispatch")

RETRAIN_ALERTS = frozenset({"FeatureDrift", "OnlineQualityDrop"})
EVENT_TYPE = "retrain"
DEFAULT_API_URL = "https://api.github.com"
DEFAULT_MIN_INTERVAL_SECONDS = 86400.0
# Alertmanager sends every alert of a group in one body; a few hundred fit in this many bytes.
MAX_BODY_BYTES = 1024 * 1024
MAX_ALERTS = 1000
MAX_TEXT = 4096  # any one label, annotation or key
# GitHub's client_payload takes at most 10 top-level keys and a bounded size: a summary of the alerts.
MAX_PAYLOAD_ALERTS = 20
MAX_REMEMBERED_GROUPS = 1000
GITHUB_TIMEOUT_SECONDS = 10.0
REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}")


# ---------------------------------------------------------------------------------------------- input
class Alert(BaseModel):
    """One alert of Alertmanager's webhook (version 4); the fields it sends that are not used here are
    allowed and ignored."""

    model_config = ConfigDict(extra="ignore")

    status: str = Field(max_length=16)
    labels: dict[str, str] = Field(max_length=64)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=64)
    startsAt: str = Field(default="", max_length=64)
    fingerprint: str = Field(default="", max_length=64)


class Notification(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: str = Field(max_length=8)
    groupKey: str = Field(min_length=1, max_length=MAX_TEXT)
    status: str = Field(max_length=16)
    receiver: str = Field(default="", max_length=MAX_TEXT)
    alerts: list[Alert] = Field(max_length=MAX_ALERTS)


def _clipped(values: dict[str, str]) -> dict[str, str]:
    """Each label and annotation cut to MAX_TEXT characters. Cut, not refused: Alertmanager does not
    retry a 4xx, so one long description would lose the whole trigger (the body is bounded already)."""
    return {key[:MAX_TEXT]: value[:MAX_TEXT] for key, value in values.items()}


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    token: str | None = field(repr=False)  # never in a log line, not even by accident
    repository: str | None
    api_url: str
    min_interval: float
    state_file: Path | None

    @property
    def enabled(self) -> bool:
        return bool(self.token and self.repository)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        repository = env.get("GITHUB_REPOSITORY") or None
        if repository is not None and not REPOSITORY.fullmatch(repository):
            raise SystemExit(f"GITHUB_REPOSITORY must be <owner>/<name>, not {repository!r}")
        api_url = (env.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")
        if not api_url.startswith(("https://", "http://")):
            raise SystemExit(f"GITHUB_API_URL must start with https:// or http://, not {api_url!r}")
        host = urllib.parse.urlsplit(api_url).hostname
        if api_url.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
            # The token would cross the network in clear: plain http is for a fake on loopback only.
            raise SystemExit(f"GITHUB_API_URL must be https:// unless on loopback, not {api_url!r}")
        text = env.get("RETRAIN_MIN_INTERVAL_SECONDS") or str(DEFAULT_MIN_INTERVAL_SECONDS)
        try:
            interval = float(text)
        except ValueError:
            interval = -1.0
        if not interval >= 0:
            raise SystemExit(f"RETRAIN_MIN_INTERVAL_SECONDS must be a number of seconds >= 0, not {text!r}")
        state = env.get("RETRAIN_DISPATCH_STATE_FILE")
        return cls(
            token=env.get("RETRAIN_DISPATCH_TOKEN") or None,
            repository=repository,
            api_url=api_url,
            min_interval=interval,
            state_file=Path(state) if state else None,
        )


# ---------------------------------------------------------------------------------------------- state
@dataclass
class State:
    """When the last dispatch went out (unix time, 0: never), and the groups that caused one, by key."""

    last_dispatch: float = 0.0
    groups: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, file: Path | None) -> State:
        if file is None or not file.exists():
            return cls()
        try:
            raw = json.loads(file.read_text())
            groups = {str(key): float(value) for key, value in dict(raw.get("groups", {})).items()}
            return cls(float(raw.get("last_dispatch", 0.0)), groups)
        except (OSError, ValueError, TypeError, AttributeError) as error:
            # Refusing to start would silence the trigger; forgetting costs at most one early dispatch,
            # which the workflow's `concurrency: retrain` queues behind a running one.
            log.warning("the state file %s is unreadable (%s); starting afresh", file, error)
            return cls()

    def save(self, file: Path | None) -> None:
        if file is None:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f".{file.name}.partial")
        partial.write_text(json.dumps({"last_dispatch": self.last_dispatch, "groups": self.groups}))
        os.replace(partial, file)

    def remember(self, group: str, now: float) -> None:
        self.last_dispatch = now
        self.groups[group] = now
        while len(self.groups) > MAX_REMEMBERED_GROUPS:
            del self.groups[min(self.groups, key=self.groups.__getitem__)]


# ---------------------------------------------------------------------------------------------- GitHub
class DispatchFailed(Exception):
    pass


def payload(notification: Notification, alerts: list[Alert]) -> dict[str, Any]:
    summary = [
        {
            "alertname": alert.labels.get("alertname", ""),
            "labels": alert.labels,
            "summary": alert.annotations.get("summary", ""),
            "startsAt": alert.startsAt,
        }
        for alert in alerts[:MAX_PAYLOAD_ALERTS]
    ]
    return {
        "event_type": EVENT_TYPE,
        "client_payload": {
            "group_key": notification.groupKey,
            "alerts": summary,
            "truncated": max(0, len(alerts) - MAX_PAYLOAD_ALERTS),
        },
    }


def post_dispatch(settings: Settings, body: dict[str, Any]) -> int:
    """POST the dispatch; GitHub's status. Raises DispatchFailed, whose message holds no token."""
    url = f"{settings.api_url}/repos/{settings.repository}/dispatches"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {settings.token}",
            "Content-Type": "application/json",
            "User-Agent": "fast-mlops-retrain-dispatch",
            "X-GitHub-Api-Version": "2022-11-28",
        },
    )
    try:
        with _NO_REDIRECTS.open(request, timeout=GITHUB_TIMEOUT_SECONDS) as response:
            status = int(response.status)
    except urllib.error.HTTPError as error:  # a 3xx too: the token is never sent on to another URL
        try:
            detail = error.read(512).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            detail = "(no readable body)"
        raise DispatchFailed(f"{url} answered {error.code}: {detail}") from None
    except http.client.HTTPException as error:  # a broken answer (IncompleteRead, BadStatusLine)
        raise DispatchFailed(f"{url} answered badly: {type(error).__name__}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DispatchFailed(f"{url} could not be reached: {reason}") from None
    if not 200 <= status < 300:
        raise DispatchFailed(f"{url} answered {status}")
    return status


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect of the POST as a GET with the Authorization header, to any host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is raised as an HTTPError, a failed dispatch


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


# ---------------------------------------------------------------------------------------------- the app
class Receiver:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State.load(settings.state_file)
        self.lock = asyncio.Lock()  # one decision at a time: two notifications must not both dispatch

    async def handle(self, notification: Notification) -> dict[str, Any]:
        for alert in notification.alerts:
            alert.labels, alert.annotations = _clipped(alert.labels), _clipped(alert.annotations)
        group = notification.groupKey
        firing = [
            alert
            for alert in notification.alerts
            if alert.status == "firing" and alert.labels.get("alertname") in RETRAIN_ALERTS
        ]
        async with self.lock:
            now = time.time()
            if not firing:
                if self.state.groups.pop(group, None) is not None:  # resolved: it may dispatch again
                    self.state.save(self.settings.state_file)
                return {"dispatched": False, "reason": "no FeatureDrift or OnlineQualityDrop alert firing"}
            if group in self.state.groups:
                return {"dispatched": False, "reason": "this alert group already dispatched a retrain"}
            wait = self.state.last_dispatch + self.settings.min_interval - now
            if wait > 0:
                return {"dispatched": False, "reason": f"rate-limited: the next dispatch in {wait:.0f} s"}
            if not self.settings.enabled:
                log.warning(
                    "%d retrain alerts firing; no RETRAIN_DISPATCH_TOKEN or GITHUB_REPOSITORY", len(firing)
                )
                return {"dispatched": False, "reason": "dispatch is off: no token or repository set"}
            body = payload(notification, firing)
            try:
                status = await asyncio.to_thread(post_dispatch, self.settings, body)
            except DispatchFailed as error:
                log.error("the retrain dispatch failed: %s", error)
                raise HTTPException(502, f"the retrain dispatch failed: {error}") from None
            self.state.remember(group, now)
            self.state.save(self.settings.state_file)
        names = sorted({alert.labels.get("alertname", "") for alert in firing})
        log.info("dispatched a retrain to %s for %s (GitHub %d)", self.settings.repository, names, status)
        return {"dispatched": True, "alerts": names, "repository": self.settings.repository}


def create_app(settings: Settings | None = None) -> FastAPI:
    receiver = Receiver(settings or Settings.from_environment())
    app = FastAPI(title="fast-mlops retrain dispatch", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "dispatch_enabled": receiver.settings.enabled}

    @app.post("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            raise HTTPException(413, f"the body is over {MAX_BODY_BYTES} bytes")
        body = bytearray()
        async for chunk in request.stream():  # a chunked body has no length to check up front
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise HTTPException(413, f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            notification = Notification.model_validate_json(bytes(body))
        except ValidationError as error:
            problems = [
                {"loc": list(item["loc"]), "msg": item["msg"]} for item in error.errors(include_input=False)
            ]
            return JSONResponse({"detail": problems[:20]}, status_code=422)
        return JSONResponse(await receiver.handle(notification))

    app.state.receiver = receiver
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m api.retrain_dispatch", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9095")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from api.redaction import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # a GITHUB_API_URL with credentials in it is told without
    settings = Settings.from_environment()
    if not settings.enabled:
        log.warning("no RETRAIN_DISPATCH_TOKEN or GITHUB_REPOSITORY: alerts are taken, nothing is dispatched")
    import uvicorn

    uvicorn.run(
        create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False
    )


if __name__ == "__main__":
    main()
