"""The model's inputs as declared in params.yaml `features`, and the metadata that travels with a model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stages.params import Features

HISTOGRAM_BINS = 10


def model_inputs(frame: pd.DataFrame, features: Features) -> pd.DataFrame:
    """Numeric columns as float64 and categorical ones as object with NaN for missing: the plain types
    that sklearn, MLflow signatures and JSON payloads all agree on."""
    inputs = pd.DataFrame(index=frame.index)
    for name in features.numeric:
        inputs[name] = frame[name].astype("float64")
    for name in features.categorical:
        column = frame[name].astype(object)
        inputs[name] = column.where(frame[name].notna(), np.nan)
    return inputs


def labels(frame: pd.DataFrame, features: Features) -> np.ndarray:
    """1 for the positive label, 0 for the other: what the metrics and the classifiers are fitted on."""
    return np.asarray(frame[features.target] == features.positive_label, dtype=np.int64)


def feature_metadata(train: pd.DataFrame, features: Features) -> dict[str, Any]:
    """What a server needs to validate requests and label answers, and what drift monitoring compares
    against: the labels and the decision rule, allowed and seen categories, allowed and observed ranges,
    and the training distribution of every feature."""
    numeric = {}
    for name, spec in features.numeric.items():
        values = train[name].dropna().astype("float64")
        edges = np.unique(np.quantile(values, np.linspace(0, 1, HISTOGRAM_BINS + 1)))
        counts, _ = np.histogram(values, bins=edges)
        numeric[name] = {
            "dtype": spec.dtype,
            "min": _plain_number(spec.min),
            "max": _plain_number(spec.max),
            "nullable": spec.max_missing > 0,
            "observed_min": float(values.min()),
            "observed_max": float(values.max()),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "missing_fraction": float(train[name].isna().mean()),
            "histogram": {"edges": edges.tolist(), "fractions": (counts / counts.sum()).round(6).tolist()},
        }
    categorical = {}
    for name, category in features.categorical.items():
        frequencies = train[name].value_counts(normalize=True, dropna=True).sort_index()
        categorical[name] = {
            "allowed": list(category.categories),
            "categories": frequencies.index.tolist(),
            "nullable": category.max_missing > 0,
            "missing_fraction": float(train[name].isna().mean()),
            "frequencies": {str(key): round(float(value), 6) for key, value in frequencies.items()},
        }
    return {
        "target": features.target,
        "labels": list(features.labels),
        "positive_label": features.positive_label,
        # The classifier is fitted on labels() (1 = positive label, 0 = not): its class for the positive label.
        "positive_class": 1,
        "decision_threshold": features.decision_threshold,
        "feature_order": features.names,
        "numeric": numeric,
        "categorical": categorical,
    }


def _plain_number(value: float) -> int | float:
    """A bound as params.yaml wrote it: 17, not 17.0, so the metadata reads like the contract."""
    return int(value) if float(value).is_integer() else value
