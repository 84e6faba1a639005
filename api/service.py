"""The one class between HTTP and the model: which model serves, how it is (re)loaded, how it scores."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from api.drift import DriftMonitor
from api.errors import ModelNotReady
from api.loading import ServedModel, load_local, load_registered
from api.predictor import Codes, ColumnBatch, Label, Row, batch_size
from api.redaction import redact
from api.registry import RegistryVersion, resolve_alias
from api.settings import Settings
from api.telemetry import Telemetry
from api.watch import ModelWatch

log = logging.getLogger(__name__)
# Below this many rows the model answers in well under a millisecond: a thread hop would cost more.
INLINE_BATCH_ROWS = 32


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return redact(f"{type(error).__name__}: {text[:300]}")


def settle_heap() -> None:
    """Libraries and the model live as long as the process: take them out of the garbage collector's
    sight. Otherwise every full collection rescans the million-odd objects MLflow, pandas and sklearn
    leave behind: a pause of a few hundred milliseconds (measured: 0.4 s) in the middle of sub-millisecond
    requests. Instead that pause happens once, at the first load, before anything is served."""
    gc.collect()
    gc.freeze()


def loaded_off_the_loop(load: Callable[..., ServedModel], *args: Any) -> ServedModel:
    """`load(*args)`, run in a worker thread, its new objects then collected and frozen there as well.

    A collection holds the GIL, so a thread alone does not spare the event loop: what does is that the
    heap is frozen already (settle_heap), so this collection scans only what the load left, and that
    automatic collections are off meanwhile, so the load's allocations do not trigger a full one again
    and again. Measured by tests/benchmarks/swap_pause.py: see the README. The old model stays frozen:
    reference counting frees it when the last request on it ends; only reference cycles inside it stay
    (rare in fitted pipelines, and one per version, not per request)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        model = load(*args)
        gc.collect()
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()
    return model


class ModelService:
    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.model: ServedModel | None = None
        self.not_ready_reason = "the model has not been loaded yet"
        self._task: asyncio.Task[None] | None = None
        self._counters: dict[Label, Counter] = {}
        # The version that failed to load, not tried again until the alias points elsewhere.
        self._failed_version: str | None = None
        # What /model tells about it, while the older version keeps serving.
        self.last_reload_failure: dict[str, Any] | None = None
        if settings.model_uri:  # a fixed model follows no registry: there is nothing to report about one
            telemetry.registry.unregister(telemetry.model_registry_up)
            telemetry.registry.unregister(telemetry.model_last_successful_check)
        self.watch = ModelWatch(settings, telemetry)
        # The served model's drift window; None while nothing serves, or with DRIFT_MONITORING=false.
        self._drift: DriftMonitor | None = None
        self._drift_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-loader")
        if self.settings.drift_monitoring:
            self._drift_task = asyncio.create_task(self._watch_drift(), name="drift-monitor")

    async def stop(self) -> None:
        for task in (self._task, self._drift_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # The last interval's drift counts into the counters: a stopped worker's stay in its files.
        self.publish_drift()

    async def _run(self) -> None:
        delay, attempt = self.settings.retry_initial_seconds, 0
        while self.model is None:
            attempt += 1
            try:
                await self._load_first(attempt)
            except Exception as error:  # anything that stops a load must leave the service up and retrying
                self.not_ready_reason = redact(f"loading {self.settings.target} failed: {_short(error)}")
                self.telemetry.reloads.labels("failure").inc()
                log.warning(
                    "model load attempt %d failed (%s); next try in %.2fs",
                    attempt,
                    self.not_ready_reason,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_seconds)
        if self.settings.model_uri:
            return  # a fixed local model: nothing to follow
        while True:
            await asyncio.sleep(self.settings.reload_interval_seconds)
            await self.poll_once()

    async def _load_first(self, attempt: int) -> None:
        log.info("loading %s (attempt %d)", self.settings.target, attempt)
        if self.settings.model_uri:
            model = await asyncio.to_thread(load_local, self.settings)
        else:
            registered = await self._resolve()
            model = await asyncio.to_thread(load_registered, self.settings, registered)
        self._swap(model)
        settle_heap()  # nothing was served yet: the one full collection of the process happens here

    async def _resolve(self) -> RegistryVersion:
        """The alias's version now; the registry gauges say whether that could be known."""
        try:
            registered = await asyncio.to_thread(resolve_alias, self.settings)
        except Exception:
            self.telemetry.model_registry_up.set(0)
            raise
        self.telemetry.model_registry_up.set(1)
        self.telemetry.model_last_successful_check.set(time.time())
        return registered

    async def poll_once(self) -> bool:
        """Load and swap in the alias's version if it moved. True when a new model now serves."""
        current = self.model
        try:
            registered = await self._resolve()
        except Exception as error:  # the registry being away must not disturb the model that serves
            log.warning(
                "could not resolve %s, keeping the current model: %s", self.settings.target, _short(error)
            )
            return False
        if current is not None and registered.version == current.registry.version:
            self._failed_version = None
            return False
        if registered.version == self._failed_version:
            return False  # failed before, logged then: downloading it again would fail again
        self._failed_version = None
        log.info("%s moved to version %s; loading it", self.settings.target, registered.version)
        try:
            model = await asyncio.to_thread(loaded_off_the_loop, load_registered, self.settings, registered)
        except Exception as error:  # a bad new version must never take the old one down
            self._failed_version = registered.version
            self.last_reload_failure = {
                "version": registered.version,
                "reason": redact(_short(error)),
                "at": datetime.now(UTC).isoformat(),
            }
            self.telemetry.reloads.labels("failure").inc()
            log.error(
                "reload of %s v%s failed, version %s keeps serving (not retried until the alias moves): %s",
                registered.name,
                registered.version,
                current.registry.version if current else None,
                _short(error),
            )
            return False
        self._swap(model)
        return True

    def _swap(self, model: ServedModel) -> None:
        # One assignment: a request that already holds the old model finishes on it.
        self._counters = {label: self.telemetry.predictions.labels(str(label)) for label in model.labels}
        self._drift = self.watch.start(model)
        self.model = model
        self.not_ready_reason = ""
        self.last_reload_failure = None
        registry = model.registry
        self.telemetry.reloads.labels("success").inc()
        self.telemetry.model_info.clear()
        self.telemetry.model_info.labels(registry.name, registry.version or "", registry.alias or "").set(1)
        self.telemetry.model_loaded.set(1)
        self.telemetry.model_fast_path.set(1 if model.uses_fast_path else 0)
        log.info(
            "serving %s version %s (%s predictor)", registry.name, registry.version, model.predictor.kind
        )

    async def _watch_drift(self) -> None:
        while True:
            await asyncio.sleep(self.settings.drift_interval_seconds)
            self.publish_drift()

    def publish_drift(self) -> None:
        """The drift window's PSI now, into the gauges; on the event loop, like the counting."""
        if self._drift is not None:
            self.watch.publish(self._drift)

    # ------------------------------------------------------------------ scoring
    def require_model(self) -> ServedModel:
        model = self.model
        if model is None:
            raise ModelNotReady(self.not_ready_reason)
        return model

    def score_one(self, model: ServedModel, row: Row) -> tuple[Label, float]:
        """One record's label and positive-class probability; metrics recorded. Plain Python throughout:
        on this path each numpy call on a one-element array costs more than the arithmetic it does."""
        started = time.perf_counter()
        probability, unknown = model.predictor.predict_one(row)
        self.telemetry.inference_seconds.observe(time.perf_counter() - started)
        negative, positive = model.labels
        label = positive if probability > model.threshold else negative  # the classifiers' own rule
        counters = self._counters if self.model is model else {}
        self._count(counters, label, 1)
        drift = self._drift
        if drift is not None and self.model is model:  # into the window of the model that scored it
            drift.count_one(row, probability)
        self.telemetry.probability.observe(probability)
        for feature, count in unknown.items():
            self.telemetry.unknown_categories.labels(feature).inc(count)
        return label, probability

    async def score_batch(
        self, model: ServedModel, columns: ColumnBatch, codes: Codes | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positive-class probabilities and whether each row's label is the positive one, in row order;
        metrics recorded; the predictor's categorical codes left in `codes` (Predictor.prepare). Large batches are scored in a worker thread, and only scored there: the booster
        releases the GIL, while the encoding would hold it against the requests the event loop is serving
        meanwhile."""
        rows = batch_size(columns)
        self.telemetry.batch_rows.inc(rows)
        started = time.perf_counter()
        predictor = model.predictor
        drift = self._drift if self.model is model else None  # a swap since the request took its model
        if drift is not None:
            # Converted once, for the predictor and the drift counts alike (the same float64 arrays either
            # would make of them).
            columns = {**columns, **drift.numeric_arrays(columns)}
        prepared, unknown = predictor.prepare(columns) if codes is None else predictor.prepare(columns, codes)
        if rows <= INLINE_BATCH_ROWS:
            probabilities = predictor.score(prepared)
        else:
            probabilities = await run_in_threadpool(predictor.score, prepared)
        self.telemetry.inference_seconds.observe(time.perf_counter() - started)
        negative, positive = model.labels
        is_positive = probabilities > model.threshold  # the classifiers' own rule
        positives = int(is_positive.sum())
        counters = self._counters if self.model is model else {}
        self._count(counters, positive, positives)
        self._count(counters, negative, rows - positives)
        if drift is not None and drift is self._drift:  # no swap while it was scored
            one_hot = prepared if isinstance(prepared, np.ndarray) else None
            drift.count_batch(columns, probabilities, one_hot, unknown)
        self.telemetry.probability.observe_many(probabilities)
        for feature, count in unknown.items():
            self.telemetry.unknown_categories.labels(feature).inc(count)
        return probabilities, is_positive

    def _count(self, counters: dict[Label, Counter], label: Label, count: int) -> None:
        if count:
            (counters.get(label) or self.telemetry.predictions.labels(str(label))).inc(count)
