"""The classification metrics every stage reports, and the decision rule they score, each written once."""

from __future__ import annotations

import numpy as np
from sklearn import metrics


def predicted_positive(probability: np.ndarray, threshold: float) -> np.ndarray:
    """The positive label where P(positive) is above the threshold: the classifiers' own `predict` rule
    at 0.5, and the rule the service applies with the threshold the model carries."""
    return np.asarray(probability > threshold)


def classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = predicted_positive(probability, threshold).astype(int)
    scores = {
        "roc_auc": metrics.roc_auc_score(y_true, probability),
        "pr_auc": metrics.average_precision_score(y_true, probability),
        "accuracy": metrics.accuracy_score(y_true, predicted),
        "precision": metrics.precision_score(y_true, predicted, zero_division=0),
        "recall": metrics.recall_score(y_true, predicted, zero_division=0),
        "f1": metrics.f1_score(y_true, predicted, zero_division=0),
        "log_loss": metrics.log_loss(y_true, probability, labels=[0, 1]),
        "brier": metrics.brier_score_loss(y_true, probability),
    }
    # Rounded so that metrics files are byte-identical across runs and readable in diffs.
    return {name: round(float(value), 6) for name, value in scores.items()}
