"""Fairness per sensitive attribute: the figures on a hand-made example, small groups left out of the
gated summary, and the rule engine gating them (tolerance against main, an optional ceiling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from stages.fairness import fairness
from stages.params import Quality
from stages.quality import evaluate
from stages.register import decide

# Two groups of ten: a is selected 6 times in 10 (TPR 4/5, FPR 2/5), b 2 in 10 (TPR 2/5, FPR 0/5).
GROUP = pd.Series(["a"] * 10 + ["b"] * 10)
Y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0] * 2)
PREDICTED = np.concatenate([[1, 1, 1, 1, 0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
PROBABILITY = np.where(PREDICTED == 1, 0.8, 0.2) + np.linspace(0, 0.01, 20)


def test_the_figures_are_fairlearn_s_and_match_the_hand_computed_ones():
    per_group, summary = fairness(pd.DataFrame({"g": GROUP}), Y, PROBABILITY, PREDICTED, ["g"], min_group=1)
    assert per_group["g"]["a"]["selection_rate"] == 0.6 and per_group["g"]["b"]["selection_rate"] == 0.2
    assert (
        per_group["g"]["a"]["true_positive_rate"] == 0.8 and per_group["g"]["b"]["false_positive_rate"] == 0.0
    )
    assert summary["g"]["demographic_parity_difference"] == pytest.approx(0.4)
    assert summary["g"]["demographic_parity_ratio"] == pytest.approx(0.2 / 0.6, abs=1e-6)
    assert summary["g"]["equalized_odds_difference"] == pytest.approx(0.4)  # max(|0.8-0.4|, |0.4-0.0|)
    assert summary["g"]["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(Y, PREDICTED, sensitive_features=GROUP)
    )
    assert summary["g"]["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(Y, PREDICTED, sensitive_features=GROUP)
    )


def test_a_group_too_small_is_reported_but_left_out_of_the_gated_summary():
    group = pd.concat([GROUP, pd.Series(["c", "c"])], ignore_index=True)
    y, predicted = np.append(Y, [1, 0]), np.append(PREDICTED, [0, 1])  # c: TPR 0, FPR 1
    per_group, summary = fairness(
        pd.DataFrame({"g": group}), y, np.append(PROBABILITY, [0.3, 0.7]), predicted, ["g"], min_group=3
    )
    assert per_group["g"]["c"]["rows"] == 2 and per_group["g"]["c"]["gated"] is False
    assert summary["g"]["equalized_odds_difference"] == pytest.approx(0.4), "c would make it 1.0"


QUALITY = Quality.model_validate({
    "primary_metric": "roc_auc",
    "metrics": {"roc_auc": {"floor": 0.5}},
    "fairness": {"equalized_odds_difference": {"direction": "lower", "tolerance": 0.02}},
})  # fmt: skip
MAIN = {"roc_auc": 0.9, "fairness.gender.equalized_odds_difference": 0.10}


def test_the_gate_fails_when_equalized_odds_rise_beyond_the_tolerance_and_passes_otherwise():
    rules = QUALITY.rules(["gender"])
    worse = evaluate({**MAIN, "fairness.gender.equalized_odds_difference": 0.13}, MAIN, rules)
    assert worse.failures == [
        "fairness.gender.equalized_odds_difference regressed by 0.0300 (0.1000 → 0.1300), more than its "
        "tolerance 0.0200 (lower is better)"
    ]
    assert evaluate({**MAIN, "fairness.gender.equalized_odds_difference": 0.115}, MAIN, rules).passed


def test_fairness_rules_apply_only_to_the_attributes_in_slices():
    assert QUALITY.rules([]).keys() == {"roc_auc"}
    assert evaluate({"roc_auc": 0.9}, {"roc_auc": 0.9}, QUALITY.rules([])).passed


def test_register_refuses_staging_above_a_fairness_ceiling_once_one_is_set():
    ceiling = Quality.model_validate(
        {
            **QUALITY.model_dump(),
            "fairness": {"equalized_odds_difference": {"direction": "lower", "floor": 0.12}},
        }
    )
    candidate = {"roc_auc": 0.9, "fairness.gender.equalized_odds_difference": 0.15}
    refused = decide(candidate, ceiling, [], ["gender"])
    assert not refused.staging
    assert "FAIL floor fairness.gender.equalized_odds_difference: 0.150000 > 0.12" in refused.reasons
    assert decide(candidate, QUALITY, [], ["gender"]).staging, "tolerances alone never block staging"
