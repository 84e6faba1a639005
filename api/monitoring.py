"""What the pipeline tells the service about watching a model, in one registry tag on its version.

Prometheus rules cannot read params.yaml, and the service must not read stages/: so `register` writes
the drift thresholds, the quality floors and the prediction reference distribution into the version's
`monitoring` tag (JSON), the service exports them as gauges, and the alert rules and dashboards compare
against those series. Each number is written once, in params.yaml.

A tag is outside input: it is read defensively. A tag too large, not JSON, or with a field of the wrong
shape loses that field (logged), never the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from api.drift import PROBABILITY_BINS

log = logging.getLogger(__name__)

MONITORING_TAG = "monitoring"
METRIC_TAG_PREFIX = "metric."
# MLflow keeps model version tag values up to 5,000 characters; this one is a few hundred.
MAX_TAG_CHARS = 4096
DRIFT_LEVELS = ("warning", "alert")


@dataclass(frozen=True)
class Monitoring:
    """The version's monitoring facts; empty where the tag says nothing (a MODEL_URI model has no tags)."""

    drift_thresholds: dict[str, float] = field(default_factory=dict)  # level -> PSI
    min_window_rows: int | None = None
    quality_floors: dict[str, float] = field(default_factory=dict)  # metric -> floor
    prediction_reference: list[float] | None = None  # PROBABILITY_BINS proportions
    test_metrics: dict[str, float] = field(default_factory=dict)  # from the `metric.*` tags


def encode_monitoring(
    drift_thresholds: dict[str, float],
    min_window_rows: int,
    quality_floors: dict[str, float],
    prediction_reference: list[float],
) -> str:
    text = json.dumps(
        {
            "drift": {**drift_thresholds, "min_window_rows": min_window_rows},
            "quality_floors": quality_floors,
            "prediction_reference": [round(value, 6) for value in prediction_reference],
        },
        sort_keys=True,
    )
    if len(text) > MAX_TAG_CHARS:
        raise ValueError(f"the monitoring tag would be {len(text)} characters, over {MAX_TAG_CHARS}")
    return text


def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """The test-split metrics (roc_auc, ...) the pipeline wrote as `metric.*` tags; a tag that is not a
    finite number is left out."""
    metrics = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            number = _number(value)
            if number is None:
                log.warning("tag %s=%r is not a number; left out", key, value)
            else:
                metrics[key.removeprefix(METRIC_TAG_PREFIX)] = number
    return metrics


def parse_monitoring(tags: dict[str, str]) -> Monitoring:
    metrics = metrics_from_tags(tags)
    text = tags.get(MONITORING_TAG)
    if text is None:
        return Monitoring(test_metrics=metrics)
    raw: Any = None
    if len(text) <= MAX_TAG_CHARS:
        with contextlib.suppress(ValueError):
            raw = json.loads(text)
    if not isinstance(raw, dict):
        log.warning(
            "the %s tag is not a JSON object of at most %d characters; ignored", MONITORING_TAG, MAX_TAG_CHARS
        )
        return Monitoring(test_metrics=metrics)
    drift = _mapping(raw.get("drift"))
    thresholds = {level: value for level in DRIFT_LEVELS if (value := _number(drift.get(level))) is not None}
    rows = drift.get("min_window_rows")
    min_rows = rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0 else None
    floors = _mapping(raw.get("quality_floors"))
    quality_floors = {
        str(name): value for name, item in floors.items() if (value := _number(item)) is not None
    }
    return Monitoring(
        drift_thresholds=thresholds,
        min_window_rows=min_rows,
        quality_floors=quality_floors,
        prediction_reference=_proportions(raw.get("prediction_reference")),
        test_metrics=metrics,
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _proportions(value: Any) -> list[float] | None:
    """PROBABILITY_BINS non-negative numbers that sum to 1 (give or take their rounding), or None."""
    if not isinstance(value, list):
        return None
    numbers = [number for item in value if (number := _number(item)) is not None and number >= 0]
    if len(numbers) != len(value) or len(numbers) != PROBABILITY_BINS or not 0.99 <= sum(numbers) <= 1.01:
        return None
    return numbers
