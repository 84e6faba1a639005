"""The model families and how one is fitted; `train` and `tune` both fit through here.

A candidate is one sklearn Pipeline (imputation, scaling, one-hot encoding, the estimator), so training
and serving cannot drift apart. XGBoost stops early on a seeded split carved out of the training rows
(`train.early_stopping`): `n_estimators` is a ceiling, and the rounds it used are kept. The validation
split only scores and selects. The chosen family is then refitted on train + validation with the same
parameters and its rounds scaled to the larger set, optionally calibrated (`train.calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from xgboost import XGBClassifier

from stages.params import EarlyStopping, Family, Features

MISSING_CATEGORY = "__missing__"
CALIBRATION_FOLDS = 5


def build_pipeline(family: Family, features: Features, settings: dict[str, Any], seed: int) -> Pipeline:
    """Preprocessing and estimator in one Pipeline, so training and serving cannot drift apart."""
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                list(features.numeric),
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
                        ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                list(features.categorical),
            ),
        ],
        sparse_threshold=0.0,
    )
    estimator: LogisticRegression | XGBClassifier
    if family == "logreg":
        estimator = LogisticRegression(**settings, random_state=seed)
    else:  # stages.params.Family names every family there is
        estimator = XGBClassifier(**settings, tree_method="hist", random_state=seed, eval_metric="logloss")
    return Pipeline([("preprocess", preprocess), ("classifier", estimator)])


@dataclass(frozen=True)
class Fitted:
    pipeline: Pipeline
    rounds: int | None  # boosting rounds used (early stopping); None for a family without rounds
    fitted_rows: int  # rows the estimator was fitted on (the training rows less the stopping split)


def fit(
    family: Family,
    features: Features,
    settings: dict[str, Any],
    early_stopping: EarlyStopping | None,
    seed: int,
    x: pd.DataFrame,
    y: np.ndarray,
) -> Fitted:
    """One candidate on the training rows. XGBoost with early stopping holds out a seeded, stratified
    share of them to stop on; nothing else (validation, test) takes part."""
    pipeline = build_pipeline(family, features, settings, seed)
    if family != "xgboost" or early_stopping is None:
        pipeline.fit(x, y)
        rounds = settings.get("n_estimators") if family == "xgboost" else None
        return Fitted(pipeline, rounds, len(x))
    x_fit, x_stop, y_fit, y_stop = train_test_split(
        x, y, test_size=early_stopping.fraction, stratify=y, random_state=seed
    )
    preprocess, classifier = pipeline.named_steps["preprocess"], pipeline.named_steps["classifier"]
    classifier.set_params(early_stopping_rounds=early_stopping.rounds)
    encoded = preprocess.fit_transform(x_fit)
    classifier.fit(encoded, y_fit, eval_set=[(preprocess.transform(x_stop), y_stop)], verbose=False)
    return Fitted(pipeline, int(classifier.best_iteration) + 1, len(x_fit))


def refit_settings(family: Family, settings: dict[str, Any], fitted: Fitted, rows: int) -> dict[str, Any]:
    """The candidate's parameters for a fit on `rows` rows: XGBoost's rounds scaled from the rows its
    early stopping saw to the larger set (more data supports proportionally more rounds at the same
    learning rate), with no early stopping left to do."""
    if family != "xgboost" or fitted.rounds is None:
        return dict(settings)
    return {**settings, "n_estimators": max(1, round(fitted.rounds * rows / fitted.fitted_rows))}


def refit(
    family: Family,
    features: Features,
    settings: dict[str, Any],
    calibration: str,
    seed: int,
    x: pd.DataFrame,
    y: np.ndarray,
) -> Any:
    """The final model on train + validation. With calibration, one estimator on all rows and one
    calibrator fitted on its cross-validated predictions (`ensemble=False`): the served model stays a
    single pipeline plus a monotone map, not five pipelines."""
    pipeline = build_pipeline(family, features, settings, seed)
    if calibration == "none":
        return pipeline.fit(x, y)
    calibrated = CalibratedClassifierCV(pipeline, method=calibration, cv=CALIBRATION_FOLDS, ensemble=False)
    return calibrated.fit(x, y)
