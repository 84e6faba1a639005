"""How the model treats the groups of each sensitive attribute (`evaluate.slices`), with fairlearn.

Per group: the rows, the selection rate (how often the positive label is predicted), the true and the
false positive rate and the ROC AUC. Per attribute, the gated summary: the demographic parity
difference and ratio (selection rates apart) and the equalized odds difference (the larger of the TPR
and FPR gaps). A group with fewer than `evaluate.min_group_size` positives or negatives is reported but
left out of the summary: its rates are mostly noise, and one tiny group would decide the gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import roc_auc_score

DIGITS = 6


def _rounded(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), DIGITS)


def _auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    return float(roc_auc_score(y_true, y_score)) if len(np.unique(y_true)) == 2 else float("nan")


def groups(
    y: np.ndarray, predicted: np.ndarray, probability: np.ndarray, attribute: pd.Series, min_group: int
) -> dict[str, dict[str, Any]]:
    """Per-group figures of one attribute; `gated` says whether the group counts in the summary."""
    by_label = MetricFrame(
        metrics={"selection_rate": selection_rate, "true_positive_rate": true_positive_rate,
                 "false_positive_rate": false_positive_rate},
        y_true=y, y_pred=predicted, sensitive_features=attribute,
    )  # fmt: skip
    by_score = MetricFrame(
        metrics={"roc_auc": _auc}, y_true=y, y_pred=probability, sensitive_features=attribute
    )
    report = {}
    for group in by_label.by_group.index:
        mask = (attribute == group).to_numpy()
        positives = int(y[mask].sum())
        negatives = int(mask.sum()) - positives
        figures = by_label.by_group.loc[group]
        entry = {
            "rows": int(mask.sum()),
            "positives": positives,
            "selection_rate": _rounded(figures["selection_rate"]),
            "true_positive_rate": _rounded(figures["true_positive_rate"]),
            "false_positive_rate": _rounded(figures["false_positive_rate"]),
            "roc_auc": _rounded(by_score.by_group.loc[group, "roc_auc"]),
            "gated": positives >= min_group and negatives >= min_group,
        }
        # A rate with no rows to rest on (no positives: no TPR; one class: no ROC AUC) is left out.
        report[str(group)] = {key: value for key, value in entry.items() if value is not None}
    return report


def summary(y: np.ndarray, predicted: np.ndarray, attribute: pd.Series, gated: list[str]) -> dict[str, float]:
    """The attribute's gated figures, over the rows of its gated groups only."""
    mask = attribute.astype(str).isin(gated).to_numpy()
    if len(set(attribute[mask].astype(str))) < 2:
        return {}  # fewer than two groups large enough: nothing to compare
    y, predicted, features = y[mask], predicted[mask], attribute[mask].astype(str)
    return {
        "demographic_parity_difference": round(
            float(demographic_parity_difference(y, predicted, sensitive_features=features)), DIGITS
        ),
        "demographic_parity_ratio": round(
            float(demographic_parity_ratio(y, predicted, sensitive_features=features)), DIGITS
        ),
        "equalized_odds_difference": round(
            float(equalized_odds_difference(y, predicted, sensitive_features=features)), DIGITS
        ),
    }


def fairness(
    frame: pd.DataFrame,
    y: np.ndarray,
    probability: np.ndarray,
    predicted: np.ndarray,
    columns: list[str],
    min_group: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """(per-group figures by attribute, gated summary by attribute) for each sensitive attribute."""
    per_group, summaries = {}, {}
    for column in columns:
        attribute = frame[column].astype(object).where(frame[column].notna(), "(missing)")
        per_group[column] = groups(y, predicted, probability, attribute, min_group)
        gated = [group for group, figures in per_group[column].items() if figures["gated"]]
        summaries[column] = summary(y, predicted, attribute, gated)
    return per_group, summaries
