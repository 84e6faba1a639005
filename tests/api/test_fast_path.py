"""The compiled predictor against sklearn and XGBoost themselves, on small synthetic data (no MLflow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler
from xgboost import XGBClassifier

from api import trees as trees_module
from api.compiler import compile_pipeline
from api.predictor import Columns, UnsupportedPipeline
from api.trees import TreeEnsemble, sigmoid

COLUMNS = Columns(numeric=("x1", "x2"), categorical=("colour", "size"))
TOLERANCE = 1e-6


def frame(n: int, seed: int, unseen: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(
        {
            "x1": rng.normal(50, 10, n),
            "x2": rng.integers(0, 5, n).astype(float),
            "colour": rng.choice(["red", "green", "blue"], n).astype(object),
            "size": rng.choice(["S", "M", "L"], n).astype(object),
        }
    )
    data.loc[rng.random(n) < 0.1, "x1"] = np.nan
    data.loc[rng.random(n) < 0.1, "colour"] = np.nan
    if unseen:
        data.loc[rng.random(n) < 0.2, "size"] = "XXL"
    return data


def target(data: pd.DataFrame) -> np.ndarray:
    score = data["x1"].fillna(50) / 10 + (data["colour"] == "red") * 2 - data["x2"]
    return (score > score.median()).to_numpy(dtype=int)


def pipeline(classifier, scaler=None, encoder=None) -> Pipeline:
    return Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        (
                            "numeric",
                            Pipeline(
                                [
                                    ("impute", SimpleImputer(strategy="median")),
                                    ("scale", scaler or StandardScaler()),
                                ]
                            ),
                            list(COLUMNS.numeric),
                        ),
                        (
                            "categorical",
                            Pipeline(
                                [
                                    ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                                    (
                                        "encode",
                                        encoder
                                        or OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                                    ),
                                ]
                            ),
                            list(COLUMNS.categorical),
                        ),
                    ],
                    sparse_threshold=0.0,
                ),
            ),
            ("classifier", classifier),
        ]
    )


def rows_of(data: pd.DataFrame) -> list[dict]:
    return [
        {key: None if isinstance(value, float) and np.isnan(value) else value for key, value in row.items()}
        for row in data.to_dict(orient="records")
    ]


CLASSIFIERS = {
    "logreg": lambda: LogisticRegression(max_iter=500),
    "xgboost": lambda: XGBClassifier(n_estimators=40, max_depth=4, n_jobs=1, random_state=0),
}


@pytest.mark.parametrize("family", list(CLASSIFIERS))
def test_every_route_through_the_fast_path_matches_predict_proba(family):
    train, test = frame(600, 1), frame(300, 2, unseen=True)
    fitted = pipeline(CLASSIFIERS[family]()).fit(train, target(train))
    fast = compile_pipeline(fitted, COLUMNS, positive_label="yes")
    expected = fitted.predict_proba(test)[:, 1]
    rows = rows_of(test)
    many, unknown = fast.predict(rows)
    np.testing.assert_allclose(many, expected, rtol=0, atol=TOLERANCE)
    few = np.concatenate([fast.predict(rows[start : start + 5])[0] for start in range(0, len(rows), 5)])
    np.testing.assert_allclose(few, expected, rtol=0, atol=TOLERANCE)
    one = np.array([fast.predict_one(row)[0] for row in rows])
    np.testing.assert_allclose(one, expected, rtol=0, atol=TOLERANCE)
    assert unknown == {"size": int((test["size"] == "XXL").sum())}
    assert fast.predict_one({**rows[0], "size": "XXL"})[1] == {"size": 1}
    assert fast.predict_one({**rows[0], "colour": None})[1] == {}


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (lambda: pipeline(LogisticRegression(), scaler=MinMaxScaler()), "MinMaxScaler"),
        (
            lambda: pipeline(LogisticRegression(), encoder=OneHotEncoder(sparse_output=False)),
            "ignore unknowns",
        ),
        (lambda: pipeline(RandomForestClassifier(n_estimators=3, random_state=0)), "RandomForestClassifier"),
    ],
    ids=["another scaler", "unknown categories raise", "another classifier"],
)
def test_shapes_it_cannot_replay_are_refused(broken, reason):
    train = frame(200, 3)
    with pytest.raises(UnsupportedPipeline, match=reason):
        compile_pipeline(broken().fit(train, target(train)), COLUMNS, positive_label="yes")


@pytest.mark.parametrize("complete_levels", [True, False], ids=["complete levels", "plain layout"])
def test_the_trees_replay_xgboost_with_missing_values_and_early_stopping(complete_levels, monkeypatch):
    if not complete_levels:  # the layout of ensembles too deep to pad
        monkeypatch.setattr(trees_module, "COMPLETE_LEVELS_MAX_DEPTH", 0)
    rng = np.random.default_rng(5)
    features = rng.normal(size=(800, 6))
    labels = (features[:, 0] + features[:, 1] ** 2 > 1).astype(int)
    features[rng.random(features.shape) < 0.15] = np.nan  # default branches get used
    model = XGBClassifier(n_estimators=60, max_depth=5, n_jobs=1, early_stopping_rounds=5, random_state=0)
    model.fit(features[:600], labels[:600], eval_set=[(features[600:], labels[600:])], verbose=False)
    booster = model.get_booster()
    iterations = (0, model.best_iteration + 1)
    trees = TreeEnsemble(booster, iterations)
    assert (trees._levels is not None) == complete_levels
    expected = booster.inplace_predict(features, iteration_range=iterations, missing=np.nan)
    np.testing.assert_allclose(trees.predict(features), expected, rtol=0, atol=TOLERANCE)
    complete = features[~np.isnan(features).any(axis=1)]
    expected_complete = booster.inplace_predict(complete, iteration_range=iterations)
    np.testing.assert_allclose(
        [trees.predict_row(row) for row in complete], expected_complete, atol=TOLERANCE
    )


def test_sigmoid_is_stable_at_both_ends():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(2.0) == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-15)
