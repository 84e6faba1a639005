"""The served model's monitoring series, set when a model is swapped in: its quality floors and test
metrics, its drift thresholds (all from its registry tags, api/monitoring.py), its labelled counters at
zero, and its drift window (api/drift.py), whose PSI is published here."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.drift import PREDICTION, PROPORTION_FLOOR, DriftMonitor, feature_bins, probability_labels
from api.fast import FastPredictor
from api.loading import ServedModel
from api.monitoring import parse_monitoring
from api.redaction import redact
from api.settings import Settings
from api.telemetry import BODY_FIELD, UNKNOWN_FIELD, Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Exported:
    """A drift window and the counter children its counts are added to: one list per quantity (each
    feature, then PREDICTION), a child per bin, in the window's bin order."""

    drift: DriftMonitor
    version: str
    children: dict[str, list[Any]]


class ModelWatch:
    """The served model's monitoring series: set when a model is swapped in, and the drift window's PSI
    each time it is published. With DRIFT_MONITORING=false no drift series is exported; the model's floors
    and test metrics still are (they describe the model, and the online quality panels compare with them)."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings, self.telemetry = settings, telemetry
        if not settings.drift_monitoring:
            for gauge in (
                telemetry.feature_drift_psi,
                telemetry.prediction_drift_psi,
                telemetry.drift_window_rows,
                telemetry.drift_psi_threshold,
                telemetry.drift_min_window_rows,
                telemetry.feature_drift_bin_rows,
                telemetry.prediction_drift_bin_rows,
                telemetry.feature_drift_reference,
                telemetry.prediction_drift_reference,
                telemetry.drift_proportion_floor,
            ):
                telemetry.registry.unregister(gauge)
        else:
            telemetry.drift_proportion_floor.set(PROPORTION_FLOOR)
        self._exported: _Exported | None = None
        self._retired: _Exported | None = None  # the version before: its last counts may still be scraped

    def start(self, model: ServedModel) -> DriftMonitor | None:
        """The new model's figures exported, and its drift window, empty (None with DRIFT_MONITORING=false).
        Its labelled counters start at zero for every feature, so that panels show 0 rather than no data."""
        telemetry, columns = self.telemetry, model.requests.columns
        for name in columns.categorical:
            telemetry.unknown_categories.labels(name)
        for name in (*columns.order, BODY_FIELD, UNKNOWN_FIELD):
            telemetry.validation_errors.labels(name)
        monitoring = parse_monitoring(model.registry.tags)
        for gauge, values in (
            (telemetry.model_quality_floor, monitoring.quality_floors),
            (telemetry.model_test_metric, monitoring.test_metrics),
        ):
            gauge.clear()
            for name, value in values.items():
                gauge.labels(name).set(value)
        if not self.settings.drift_monitoring:
            return None
        telemetry.drift_psi_threshold.clear()
        for level, threshold in monitoring.drift_thresholds.items():
            telemetry.drift_psi_threshold.labels(level).set(threshold)
        rows = monitoring.min_window_rows
        telemetry.drift_min_window_rows.set(math.nan if rows is None else rows)
        try:
            bins = [item for item in feature_bins(model.feature_metadata) if item.name in columns.order]
        except (KeyError, TypeError, ValueError) as error:  # a model logged without the distributions
            log.warning("no drift figures for this model: its feature metadata lacks %s", redact(repr(error)))
            bins = []
        reference = monitoring.prediction_reference
        drift = DriftMonitor(
            bins,
            None if reference is None else np.asarray(reference),
            self.settings.drift_window_rows,
            self.settings.drift_buckets,
        )
        if isinstance(model.predictor, FastPredictor):  # its one-hot matrix already holds the categories
            drift.read_one_hot(model.predictor.one_hot_positions, model.predictor.width)
        telemetry.feature_drift_psi.clear()
        self._export(drift, model.registry.version or "")
        self.publish(drift)
        return drift

    def _export(self, drift: DriftMonitor, version: str) -> None:
        """The new version's reference proportions, and its bin counters at 0; the outgoing version's last
        counts added to its own counters. Only the outgoing version's counters are kept besides the new
        one's: a long-running service that swaps often keeps a bounded set of series."""
        telemetry = self.telemetry
        if self._exported is not None:
            self._drain(self._exported)
            if self._retired is not None and self._retired.version not in (version, self._exported.version):
                self._forget(self._retired)
            self._retired = self._exported
        telemetry.feature_drift_reference.clear()
        telemetry.prediction_drift_reference.clear()
        children: dict[str, list[Any]] = {}
        for item in drift.bins:
            labels = item.labels()
            for label, share in zip(labels, item.reference, strict=True):
                telemetry.feature_drift_reference.labels(version, item.name, label).set(float(share))
            children[item.name] = [
                telemetry.feature_drift_bin_rows.labels(version, item.name, label) for label in labels
            ]
        labels = probability_labels()
        if drift.prediction_reference is not None:
            for label, share in zip(labels, drift.prediction_reference, strict=True):
                telemetry.prediction_drift_reference.labels(version, label).set(float(share))
        children[PREDICTION] = [
            telemetry.prediction_drift_bin_rows.labels(version, label) for label in labels
        ]
        self._exported = _Exported(drift, version, children)

    def _drain(self, exported: _Exported) -> None:
        counts = exported.drift.drain()
        for name, children in exported.children.items():
            for child, count in zip(children, counts[name].tolist(), strict=True):
                if count:
                    child.inc(count)

    def _forget(self, exported: _Exported) -> None:
        # In multiprocess mode a series lives on in its worker's file whatever this process does (and
        # prometheus_client warns): there the set stays bounded by the worker's lifetime instead.
        if not self.telemetry.multiprocess:
            version = {"model_version": exported.version}
            self.telemetry.feature_drift_bin_rows.remove_by_labels(version)
            self.telemetry.prediction_drift_bin_rows.remove_by_labels(version)

    def publish(self, drift: DriftMonitor) -> None:
        """The window's PSI now, into the gauges: NaN where there is nothing to compare (no rows yet, or no
        prediction reference with the model)."""
        rows, features, prediction = drift.psi()
        self.telemetry.drift_window_rows.set(rows)
        for item in drift.bins:
            self.telemetry.feature_drift_psi.labels(item.name).set(features.get(item.name, math.nan))
        self.telemetry.prediction_drift_psi.set(math.nan if prediction is None else prediction)
        if self._exported is not None and self._exported.drift is drift:
            self._drain(self._exported)
