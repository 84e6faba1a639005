"""Turn the logged sklearn Pipeline into a FastPredictor, once, at load time.

The logged model is `Pipeline([preprocess: ColumnTransformer(numeric: impute+scale, categorical:
impute+one-hot), classifier])`. `compile_predictor` reads the fitted parameters and replays them with
plain Python and numpy: arithmetic for the numeric columns, a dict from category to output column for the
one-hot block, then the booster or the trees (or a dot product and a logistic function). Anything it does
not recognise raises `UnsupportedPipeline`, and the caller serves the generic pandas path instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from api.fast.predictor import CategoricalColumn, FastPredictor, NumericColumn, Scorer
from api.fast.trees import TreeEnsemble, UnsupportedBooster, sigmoid
from api.predictor import Columns

# Up to this many rows, walking the trees with numpy beats the booster's fixed per-call cost.
FEW_ROWS = 8


class UnsupportedPipeline(Exception):
    """The pipeline's shape is not one the fast path can replay exactly."""


def _steps(transformer: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    return [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]


def _numeric_block(steps: list[Any], names: list[str], offset: int) -> list[NumericColumn]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    fill = np.full(len(names), np.nan)
    mean, scale = np.zeros(len(names)), np.ones(len(names))
    kinds = [type(step) for step in steps]
    if kinds not in ([SimpleImputer, StandardScaler], [StandardScaler], [SimpleImputer]):
        raise UnsupportedPipeline(f"numeric block {[kind.__name__ for kind in kinds]}")
    for step in steps:
        if isinstance(step, SimpleImputer):
            statistics = np.asarray(step.statistics_, dtype=np.float64)
            if step.add_indicator or not (
                isinstance(step.missing_values, float) and np.isnan(step.missing_values)
            ):
                raise UnsupportedPipeline("numeric imputer with an indicator or a non-NaN missing marker")
            if statistics.shape != (len(names),) or np.isnan(statistics).any():
                raise UnsupportedPipeline("numeric imputer dropped an all-missing column")
            fill = statistics
        else:
            if step.mean_ is not None:
                mean = np.asarray(step.mean_, dtype=np.float64)
            if step.scale_ is not None:
                scale = np.asarray(step.scale_, dtype=np.float64)
    return [
        NumericColumn(name, offset + i, float(fill[i]), float(mean[i]), float(scale[i]))
        for i, name in enumerate(names)
    ]


def _categorical_block(
    steps: list[Any], names: list[str], offset: int
) -> tuple[list[CategoricalColumn], int]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    kinds = [type(step) for step in steps]
    if kinds not in ([SimpleImputer, OneHotEncoder], [OneHotEncoder]):
        raise UnsupportedPipeline(f"categorical block {[kind.__name__ for kind in kinds]}")
    fills: list[Any] = [None] * len(names)
    imputer, encoder = (steps[0], steps[1]) if len(steps) == 2 else (None, steps[0])
    if imputer is not None:
        if imputer.strategy != "constant" or imputer.add_indicator:
            raise UnsupportedPipeline(f"categorical imputer strategy {imputer.strategy!r}")
        fills = list(imputer.statistics_)
    if encoder.handle_unknown != "ignore" or encoder.drop is not None or encoder.sparse_output:
        raise UnsupportedPipeline("one-hot encoder must ignore unknowns, drop nothing and be dense")
    if getattr(encoder, "infrequent_categories_", None) is not None and any(
        item is not None for item in encoder.infrequent_categories_
    ):
        raise UnsupportedPipeline("one-hot encoder groups infrequent categories")
    columns, position = [], offset
    for name, fill, categories in zip(names, fills, encoder.categories_, strict=True):
        positions = {category: position + i for i, category in enumerate(categories.tolist())}
        if any(isinstance(category, float) and math.isnan(category) for category in positions):
            raise UnsupportedPipeline(f"{name}: NaN is a category")
        columns.append(CategoricalColumn(name, fill, positions))
        position += len(categories)
    return columns, position - offset


def _scorer(classifier: Any, width: int, complete_rows: bool, margin: bool = False) -> Scorer:
    """The classifier as functions of encoded inputs giving P(classes_[1]); with `margin`, a linear model
    gives its decision function instead (what a calibrator reads from it). `complete_rows`: encoded rows
    never hold NaN (every numeric column is imputed)."""
    from sklearn.linear_model import LogisticRegression

    if getattr(classifier, "n_features_in_", width) != width or len(classifier.classes_) != 2:
        raise UnsupportedPipeline("classifier input width or class count does not match")
    if type(classifier) is LogisticRegression:
        weights = np.asarray(classifier.coef_, dtype=np.float64).reshape(-1)
        intercept = float(np.asarray(classifier.intercept_).reshape(-1)[0])
        if margin:
            return Scorer(
                "fast-linear",
                lambda matrix: np.asarray(matrix @ weights + intercept),
                lambda row: float(row @ weights) + intercept,
            )

        def linear(matrix: np.ndarray) -> np.ndarray:
            return np.asarray(1.0 / (1.0 + np.exp(-(matrix @ weights + intercept))))

        def linear_one(row: np.ndarray) -> float:
            return sigmoid(float(row @ weights) + intercept)

        return Scorer("fast-linear", linear, linear_one)
    from xgboost import XGBClassifier

    if type(classifier) is XGBClassifier:
        return _boosted_scorer(classifier, complete_rows)
    raise UnsupportedPipeline(f"classifier {type(classifier).__name__}")


def _boosted_scorer(classifier: Any, complete_rows: bool) -> Scorer:
    if classifier.get_params().get("objective") != "binary:logistic":
        raise UnsupportedPipeline(f"xgboost objective {classifier.get_params().get('objective')!r}")
    booster = classifier.get_booster()
    # A loaded booster forgets n_jobs and would use every core: on a small box that means latency spikes.
    booster.set_param({"nthread": 1})
    try:
        iterations = (0, classifier.best_iteration + 1)
    except AttributeError:  # no early stopping: every tree
        iterations = (0, 0)

    def booster_score(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(
            booster.inplace_predict(
                matrix, iteration_range=iterations, missing=np.nan, validate_features=False
            )
        )

    def booster_one(row: np.ndarray) -> float:
        return float(booster_score(row[None, :])[0])

    try:
        trees = TreeEnsemble(booster, iterations)
    except UnsupportedBooster:
        return Scorer("fast-xgboost", booster_score, booster_one)

    def boosted(matrix: np.ndarray) -> np.ndarray:
        return trees.predict(matrix) if matrix.shape[0] <= FEW_ROWS else booster_score(matrix)

    def boosted_one(row: np.ndarray) -> float:
        return float(boosted(row[None, :])[0])

    one = trees.predict_row if trees.levels is not None and complete_rows else boosted_one
    return Scorer("fast-xgboost", boosted, one, batch_limits=(FEW_ROWS,))


def _calibrated(scorer: Scorer, calibrator: Any) -> Scorer:
    """The scorer followed by the calibrator CalibratedClassifierCV fitted on its output: sklearn's
    sigmoid (expit(-(a * s + b))) or its isotonic regression (a clipped piecewise-linear map)."""
    from sklearn.calibration import _SigmoidCalibration
    from sklearn.isotonic import IsotonicRegression

    if type(calibrator) is _SigmoidCalibration:
        a, b = float(calibrator.a_), float(calibrator.b_)

        def matrix(encoded: np.ndarray) -> np.ndarray:
            return np.asarray(1.0 / (1.0 + np.exp(a * scorer.matrix(encoded) + b)))

        def row(encoded: np.ndarray) -> float:
            return sigmoid(-(a * scorer.row(encoded) + b))

    elif type(calibrator) is IsotonicRegression and calibrator.out_of_bounds == "clip":
        xs = np.asarray(calibrator.X_thresholds_, dtype=np.float64)
        ys = np.asarray(calibrator.y_thresholds_, dtype=np.float64)

        def matrix(encoded: np.ndarray) -> np.ndarray:
            return np.asarray(np.interp(scorer.matrix(encoded), xs, ys))

        def row(encoded: np.ndarray) -> float:
            return float(np.interp(scorer.row(encoded), xs, ys))

    else:
        raise UnsupportedPipeline(f"calibrator {type(calibrator).__name__}")
    return Scorer(f"{scorer.kind}-calibrated", matrix, row, scorer.batch_limits)


def compile_predictor(model: Any, columns: Columns, positive_index: int) -> FastPredictor:
    """`positive_index`: the column of `predict_proba` that is the positive label's. `model` is the
    pipeline, or a CalibratedClassifierCV(ensemble=False) around one: one estimator and one calibrator."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    calibrator = None
    pipeline = model
    if isinstance(model, CalibratedClassifierCV):
        if len(model.calibrated_classifiers_) != 1 or len(model.calibrated_classifiers_[0].calibrators) != 1:
            raise UnsupportedPipeline("a calibrated ensemble (ensemble=True) or a multiclass calibration")
        pipeline = model.calibrated_classifiers_[0].estimator
        calibrator = model.calibrated_classifiers_[0].calibrators[0]

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise UnsupportedPipeline("expected Pipeline([preprocess, classifier])")
    preprocess, classifier = pipeline.steps[0][1], pipeline.steps[1][1]
    if not isinstance(preprocess, ColumnTransformer):
        raise UnsupportedPipeline(f"preprocess is {type(preprocess).__name__}, not a ColumnTransformer")
    numeric: list[NumericColumn] = []
    categorical: list[CategoricalColumn] = []
    width = 0
    covered: list[str] = []
    for _, transformer, selected in preprocess.transformers_:
        if transformer == "drop" or (isinstance(selected, list | tuple | np.ndarray) and len(selected) == 0):
            continue
        if transformer == "passthrough" or not all(isinstance(name, str) for name in selected):
            raise UnsupportedPipeline("passthrough columns or positional column selection")
        names = list(selected)
        steps = _steps(transformer)
        if set(names) <= set(columns.numeric):
            numeric_block = _numeric_block(steps, names, width)
            numeric.extend(numeric_block)
            width += len(numeric_block)
        elif set(names) <= set(columns.categorical):
            categorical_block, block_width = _categorical_block(steps, names, width)
            categorical.extend(categorical_block)
            width += block_width
        else:
            raise UnsupportedPipeline(f"a block mixes numeric and categorical columns: {names}")
        covered.extend(names)
    if sorted(covered) != sorted(columns.order):
        raise UnsupportedPipeline("the ColumnTransformer does not use every input column exactly once")
    complete_rows = all(math.isfinite(column.fill) for column in numeric)
    # A calibrator reads the estimator's decision function when it has one (sklearn's own choice).
    scorer = _scorer(
        classifier,
        width,
        complete_rows,
        margin=calibrator is not None and hasattr(classifier, "decision_function"),
    )
    if calibrator is not None:
        scorer = _calibrated(scorer, calibrator)
    return FastPredictor(width, numeric, categorical, scorer, positive_index == 0)
