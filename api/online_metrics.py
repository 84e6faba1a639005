"""Live accuracy: how the predictions that got their true label back (through /feedback) turned out.

The window holds the last ONLINE_METRICS_WINDOW matched items, as (probability of the positive label,
whether the true label is the positive one). A background task computes accuracy, log loss and ROC AUC
over it every DRIFT_INTERVAL_SECONDS and sets the gauges; a request only appends to the window. The
computations are numpy, checked against sklearn.metrics in the tests: sklearn is not needed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from api.telemetry import Telemetry

log = logging.getLogger(__name__)

# sklearn.metrics.log_loss clips probabilities to [eps, 1 - eps] with its dtype's eps: the same here.
EPSILON = float(np.finfo(np.float64).eps)
# The bins of the predicted probability that matched items are counted in for the whole service's ROC
# AUC (the recording rules of monitoring/prometheus/rules/feedback.yml): ties within a bin count half, so
# the binned AUC can differ from the exact one by at most half the share of positive-negative pairs that
# share a bin (tests/api/test_service_wide_counts.py checks the bound).
SCORE_BINS = 50
ACTUAL = ("negative", "positive")


@dataclass(frozen=True)
class OnlineFigures:
    samples: int
    accuracy: float
    log_loss: float
    roc_auc: float  # NaN while the window holds one class only


def accuracy(probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    return float(np.mean((probabilities > threshold) == truth))


def log_loss(probabilities: np.ndarray, truth: np.ndarray) -> float:
    clipped = np.clip(probabilities, EPSILON, 1 - EPSILON)
    return float(-np.mean(np.where(truth, np.log(clipped), np.log1p(-clipped))))


def roc_auc(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The Mann-Whitney form: the chance that a positive scores above a negative, ties counting half,
    from the average ranks of the positives."""
    positives = int(truth.sum())
    negatives = truth.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(probabilities, kind="mergesort")
    ordered = probabilities[order]
    ranks = np.empty(truth.size, dtype=np.float64)
    # Tied scores share the average of the ranks they span (1-based).
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    rank_sum = float(ranks[truth].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def score_bin_labels() -> list[str]:
    """Each score bin's upper edge: 0.02 ... 1."""
    return [format(round((index + 1) / SCORE_BINS, 6), "g") for index in range(SCORE_BINS)]


def score_bin(probability: float) -> int:
    index = int(probability * SCORE_BINS)
    return index if index < SCORE_BINS else SCORE_BINS - 1


def binned_roc_auc(counts: np.ndarray) -> float:
    """ROC AUC from counts[actual][bin] (negatives first), ties within a bin counting half: what the
    recording rules compute from the counters' sums."""
    negatives, positives = np.asarray(counts[0], dtype=np.float64), np.asarray(counts[1], dtype=np.float64)
    below = np.concatenate([[0.0], np.cumsum(negatives)[:-1]])
    pairs = positives.sum() * negatives.sum()
    return math.nan if pairs == 0 else float(np.sum(positives * (below + 0.5 * negatives)) / pairs)


def figures(probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> OnlineFigures:
    if probabilities.size == 0:
        return OnlineFigures(0, math.nan, math.nan, math.nan)
    return OnlineFigures(
        samples=int(probabilities.size),
        accuracy=accuracy(probabilities, truth, threshold),
        log_loss=log_loss(probabilities, truth),
        roc_auc=roc_auc(probabilities, truth),
    )


class OnlineMetrics:
    """The window of matched feedback and the task that publishes its figures."""

    def __init__(
        self, window: int, interval: float, telemetry: Telemetry, threshold: Callable[[], float | None]
    ) -> None:
        self.window: deque[tuple[float, bool]] = deque(maxlen=window)
        self.interval = interval
        self.telemetry = telemetry
        self._threshold = threshold  # the serving model's decision threshold (None: no model yet)
        self._task: asyncio.Task[None] | None = None
        # What this worker adds to the service-wide counters at the next publish: counts by true class
        # and score bin, the items predicted right, their summed log loss.
        self._scores = [[0] * SCORE_BINS, [0] * SCORE_BINS]
        self._correct = 0
        self._loss = 0.0
        labels = score_bin_labels()
        self._score_counters = [
            [telemetry.online_scores.labels(actual, label) for label in labels] for actual in ACTUAL
        ]
        self._below_counters = [
            [telemetry.online_scores_below.labels(actual, label) for label in labels] for actual in ACTUAL
        ]

    def add(self, probability: float, positive: bool) -> None:
        self.window.append((probability, positive))
        self._scores[positive][score_bin(probability)] += 1
        threshold = self._threshold()
        if threshold is not None and (probability > threshold) == positive:
            self._correct += 1
        clipped = min(max(probability, EPSILON), 1 - EPSILON)
        self._loss -= math.log(clipped) if positive else math.log1p(-clipped)

    def drain(self) -> None:
        """Add what was counted since the last drain to the service-wide counters."""
        telemetry = self.telemetry
        for actual, counts in enumerate(self._scores):
            below = 0
            for index, count in enumerate(counts):
                if count:
                    self._score_counters[actual][index].inc(count)
                if below:
                    self._below_counters[actual][index].inc(below)
                below += count
        if self._correct:
            telemetry.online_correct.inc(self._correct)
        if self._loss:
            telemetry.online_loss.inc(self._loss)
        self._scores = [[0] * SCORE_BINS, [0] * SCORE_BINS]
        self._correct, self._loss = 0, 0.0

    def publish(self) -> OnlineFigures | None:
        """Compute the figures over the window and set the gauges (nothing while no model serves)."""
        self.drain()
        threshold = self._threshold()
        if threshold is None:
            return None
        items = np.array(self.window, dtype=np.float64).reshape(-1, 2)
        result = figures(items[:, 0], items[:, 1].astype(bool), threshold)
        telemetry = self.telemetry
        telemetry.online_samples.set(result.samples)
        telemetry.online_accuracy.set(result.accuracy)
        telemetry.online_log_loss.set(result.log_loss)
        telemetry.online_roc_auc.set(result.roc_auc)
        return result

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.publish()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="online-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.drain()  # the last interval's counts too: a stopped worker's counters stay in its files
