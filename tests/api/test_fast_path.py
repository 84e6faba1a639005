"""The compiled predictor against sklearn and XGBoost themselves, on small synthetic data (no MLflow), and
the load-time parity check that stands between it and traffic."""

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

from api.fast import UnsupportedPipeline, compile_predictor, compiler, verify_parity
from api.fast import trees as trees_module
from api.fast.parity import parity_batch_sizes
from api.fast.trees import TreeEnsemble, sigmoid
from api.predictor import Columns

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
    fast = compile_predictor(fitted, COLUMNS, positive_index=1)
    expected = fitted.predict_proba(test)[:, 1]
    rows = rows_of(test)
    many, unknown = fast.predict_rows(rows)
    np.testing.assert_allclose(many, expected, rtol=0, atol=TOLERANCE)
    few = np.concatenate([fast.predict_rows(rows[start : start + 5])[0] for start in range(0, len(rows), 5)])
    np.testing.assert_allclose(few, expected, rtol=0, atol=TOLERANCE)
    one = np.array([fast.predict_one(row)[0] for row in rows])
    np.testing.assert_allclose(one, expected, rtol=0, atol=TOLERANCE)
    assert unknown == {"size": int((test["size"] == "XXL").sum())}
    assert fast.predict_one({**rows[0], "size": "XXL"})[1] == {"size": 1}
    assert fast.predict_one({**rows[0], "colour": None})[1] == {}


@pytest.mark.parametrize("family", list(CLASSIFIERS))
@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_a_calibrated_model_is_served_calibrated_on_every_route(family, method):
    """CalibratedClassifierCV(ensemble=False), as train's `calibration` switch fits it: one pipeline and
    one calibrator, applied to the decision function (logreg) or the probability (xgboost)."""
    from sklearn.calibration import CalibratedClassifierCV

    train, test = frame(600, 1), frame(300, 2, unseen=True)
    calibrated = CalibratedClassifierCV(pipeline(CLASSIFIERS[family]()), method=method, cv=5, ensemble=False)
    calibrated.fit(train, target(train))
    fast = compile_predictor(calibrated, COLUMNS, positive_index=1)
    assert fast.kind.endswith("-calibrated")
    expected = calibrated.predict_proba(test)[:, 1]
    uncalibrated = calibrated.calibrated_classifiers_[0].estimator.predict_proba(test)[:, 1]
    assert np.abs(expected - uncalibrated).max() > 1e-3, "the calibrator must have changed something"
    rows = rows_of(test)
    np.testing.assert_allclose(fast.predict_rows(rows)[0], expected, rtol=0, atol=TOLERANCE)
    few = np.concatenate([fast.predict_rows(rows[start : start + 5])[0] for start in range(0, len(rows), 5)])
    np.testing.assert_allclose(few, expected, rtol=0, atol=TOLERANCE)
    one = np.array([fast.predict_one(row)[0] for row in rows])
    np.testing.assert_allclose(one, expected, rtol=0, atol=TOLERANCE)


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
        compile_predictor(broken().fit(train, target(train)), COLUMNS, positive_index=1)


def early_stopped_xgboost(max_depth: int = 5) -> tuple[XGBClassifier, np.ndarray]:
    """A booster with missing values (default branches get used) and early stopping, and its features."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(800, 6))
    labels = (features[:, 0] + features[:, 1] ** 2 > 1).astype(int)
    features[rng.random(features.shape) < 0.15] = np.nan
    model = XGBClassifier(
        n_estimators=60, max_depth=max_depth, n_jobs=1, early_stopping_rounds=5, random_state=0
    )
    model.fit(features[:600], labels[:600], eval_set=[(features[600:], labels[600:])], verbose=False)
    return model, features


def test_the_trees_replay_xgboost_with_missing_values_and_early_stopping():
    model, features = early_stopped_xgboost()
    booster = model.get_booster()
    iterations = (0, model.best_iteration + 1)
    trees = TreeEnsemble(booster, iterations)
    assert trees.levels is not None
    expected = booster.inplace_predict(features, iteration_range=iterations, missing=np.nan)
    np.testing.assert_allclose(trees.predict(features), expected, rtol=0, atol=TOLERANCE)
    complete = features[~np.isnan(features).any(axis=1)]
    expected_complete = booster.inplace_predict(complete, iteration_range=iterations)
    np.testing.assert_allclose(
        [trees.predict_row(row) for row in complete], expected_complete, atol=TOLERANCE
    )


def test_trees_too_deep_to_pad_serve_one_record_through_the_few_rows_walk(monkeypatch):
    monkeypatch.setattr(trees_module, "COMPLETE_LEVELS_MAX_DEPTH", 0)
    monkeypatch.setattr(compiler, "compile_walk", lambda *_: None)  # the numpy walk, as without numba
    train, test = frame(600, 1), frame(200, 2)
    fitted = pipeline(CLASSIFIERS["xgboost"]()).fit(train, target(train))
    fast = compile_predictor(fitted, COLUMNS, positive_index=1)
    booster = fitted.named_steps["classifier"].get_booster()
    assert TreeEnsemble(booster, (0, 0)).levels is None
    one = np.array([fast.predict_one(row)[0] for row in rows_of(test)])
    np.testing.assert_allclose(one, fitted.predict_proba(test)[:, 1], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", list(CLASSIFIERS))
def test_the_parity_check_tries_every_route_the_predictor_serves(family, monkeypatch):
    train, test = frame(600, 1), frame(300, 2)
    fitted = pipeline(CLASSIFIERS[family]()).fit(train, target(train))
    fast = compile_predictor(fitted, COLUMNS, positive_index=1)
    assert fast.batch_limits == ((compiler.COMPILED_ROWS,) if family == "xgboost" else ())
    sizes: list[int] = []
    score = fast.score
    monkeypatch.setattr(fast, "score", lambda matrix: sizes.append(len(matrix)) or score(matrix))
    rows = rows_of(test)
    assert verify_parity(fast, rows, fitted.predict_proba(test)[:, 1]) <= TOLERANCE
    # Each route below a limit gets a batch of exactly its largest size; the last one a larger batch.
    assert set(fast.batch_limits) <= set(sizes)
    assert max(sizes) == len(rows) > max(fast.batch_limits, default=0)
    assert parity_batch_sizes(fast, len(rows)) == sorted({*fast.batch_limits, len(rows)})
    # A probe smaller than a limit is repeated until it reaches past it.
    sizes.clear()
    verify_parity(fast, rows[:3], fitted.predict_proba(test.head(3))[:, 1])
    assert max(sizes) > max(fast.batch_limits, default=0)


def test_the_parity_check_catches_a_route_that_goes_wrong(monkeypatch):
    # The numpy walk's route, as without numba (tests/api/test_compiled_walk.py shifts the compiled one).
    monkeypatch.setattr(compiler, "compile_walk", lambda *_: None)
    train, test = frame(600, 1), frame(300, 2)
    fitted = pipeline(CLASSIFIERS["xgboost"]()).fit(train, target(train))
    expected = fitted.predict_proba(test)[:, 1]
    walk = TreeEnsemble.predict
    monkeypatch.setattr(TreeEnsemble, "predict", lambda self, matrix: walk(self, matrix) + 0.01)
    fast = compile_predictor(fitted, COLUMNS, positive_index=1)
    assert verify_parity(fast, rows_of(test), expected) == pytest.approx(0.01, abs=1e-6)
    with pytest.raises(UnsupportedPipeline, match="no rows"):
        verify_parity(fast, [], expected[:0])


def test_sigmoid_is_stable_at_both_ends():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(2.0) == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-15)
