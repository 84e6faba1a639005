"""The classification metrics every stage reports, and the decision rule they score, each written once."""

from __future__ import annotations

import numpy as np
from sklearn import metrics

CALIBRATION_BINS = 10
INTERVAL_METRICS = ("roc_auc", "accuracy", "log_loss", "brier", "ece")


def predicted_positive(probability: np.ndarray, threshold: float) -> np.ndarray:
    """The positive label where P(positive) is above the threshold: the classifiers' own `predict` rule
    at 0.5, and the rule the service applies with the threshold the model carries."""
    return np.asarray(probability > threshold)


def expected_calibration_error(
    y_true: np.ndarray, probability: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """The rows-weighted mean gap between the predicted probability and the observed positive rate, over
    equal-width probability bins: 0 for a perfectly calibrated model."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probability, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=probability, minlength=bins)
    observed = np.bincount(which, weights=y_true, minlength=bins)
    filled = counts > 0
    gaps = np.abs(predicted[filled] - observed[filled]) / counts[filled]
    return float(np.sum(gaps * counts[filled]) / len(probability))


def _scores(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = predicted_positive(probability, threshold).astype(int)
    return {
        "roc_auc": metrics.roc_auc_score(y_true, probability),
        "pr_auc": metrics.average_precision_score(y_true, probability),
        "accuracy": metrics.accuracy_score(y_true, predicted),
        "precision": metrics.precision_score(y_true, predicted, zero_division=0),
        "recall": metrics.recall_score(y_true, predicted, zero_division=0),
        "f1": metrics.f1_score(y_true, predicted, zero_division=0),
        "log_loss": metrics.log_loss(y_true, probability, labels=[0, 1]),
        "brier": metrics.brier_score_loss(y_true, probability),
        "ece": expected_calibration_error(y_true, probability),
    }


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    # Rounded so that metrics files are byte-identical across runs and readable in diffs.
    return {name: round(float(value), 6) for name, value in _scores(y_true, probability, threshold).items()}


def bootstrap_intervals(
    y_true: np.ndarray,
    probability: np.ndarray,
    threshold: float,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of INTERVAL_METRICS: the rows resampled with replacement, seeded.
    On ~4,900 test rows ROC AUC moves by about ±0.008: a difference smaller than that is not one."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in INTERVAL_METRICS}
    rows = len(y_true)
    for _ in range(resamples):
        picked = rng.integers(0, rows, rows)
        if y_true[picked].min() == y_true[picked].max():
            continue  # one class only: no ROC AUC to take
        truth, scored = y_true[picked], probability[picked]
        predicted = predicted_positive(scored, threshold)
        draws["roc_auc"].append(metrics.roc_auc_score(truth, scored))
        draws["accuracy"].append(float(np.mean(predicted == truth)))
        draws["log_loss"].append(metrics.log_loss(truth, scored, labels=[0, 1]))
        draws["brier"].append(float(np.mean((scored - truth) ** 2)))
        draws["ece"].append(expected_calibration_error(truth, scored))
    tail = (1.0 - level) / 2 * 100
    return {
        name: [
            round(float(np.percentile(values, tail)), 6),
            round(float(np.percentile(values, 100 - tail)), 6),
        ]
        for name, values in draws.items()
        if values
    }
