"""Read a fitted sklearn pipeline into the predictor spec: plain data (numbers, categories, positions) that
`api.fast.compiler.compile_spec` turns back into a FastPredictor with no sklearn and no unpickling.

This runs where the fitted pipeline is trusted: at training time (the `serving` artifact, api/artifact.py),
and in the service only for a pickled model that ALLOW_PICKLE_MODELS lets through. The accepted shape is
`Pipeline([preprocess: ColumnTransformer(numeric: impute+scale, categorical: impute+one-hot),
classifier])`, optionally inside a CalibratedClassifierCV(ensemble=False); anything else raises
`UnsupportedPipeline`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.fast.predictor import UnsupportedPipeline
from api.predictor import Columns

SPEC_FORMAT = "fast-mlops.predictor/1"


@dataclass(frozen=True)
class ExportedPredictor:
    spec: dict[str, Any]  # JSON-ready: predictor.json
    booster: bytes | None  # XGBoost's own JSON model (booster.json), for a boosted classifier


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON writes; NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _floats(values: Any) -> list[float]:
    return [float(value) for value in np.asarray(values, dtype=np.float64).reshape(-1)]


def _steps(transformer: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    return [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]


def _numeric_block(steps: list[Any], names: list[str], offset: int) -> list[dict[str, Any]]:
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
        {
            "name": name,
            "position": offset + i,
            "fill": _plain(float(fill[i])),
            "mean": float(mean[i]),
            "scale": float(scale[i]),
        }
        for i, name in enumerate(names)
    ]


def _categorical_block(steps: list[Any], names: list[str], offset: int) -> tuple[list[dict[str, Any]], int]:
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
        fills = [_plain(value) for value in imputer.statistics_]
    if encoder.handle_unknown != "ignore" or encoder.drop is not None or encoder.sparse_output:
        raise UnsupportedPipeline("one-hot encoder must ignore unknowns, drop nothing and be dense")
    if getattr(encoder, "infrequent_categories_", None) is not None and any(
        item is not None for item in encoder.infrequent_categories_
    ):
        raise UnsupportedPipeline("one-hot encoder groups infrequent categories")
    columns, position = [], offset
    for name, fill, categories in zip(names, fills, encoder.categories_, strict=True):
        values = [_plain(category) for category in categories.tolist()]
        if any(value is None for value in values):
            raise UnsupportedPipeline(f"{name}: NaN is a category")
        # Pairs, not an object: JSON keys are text, and a category may be a number or a boolean.
        columns.append(
            {"name": name, "fill": fill, "positions": [[v, position + i] for i, v in enumerate(values)]}
        )
        position += len(values)
    return columns, position - offset


def _classifier(classifier: Any, width: int, margin: bool) -> tuple[dict[str, Any], bytes | None]:
    """`margin`: a linear model gives its decision function (what a calibrator reads from it)."""
    from sklearn.linear_model import LogisticRegression

    if getattr(classifier, "n_features_in_", width) != width or len(classifier.classes_) != 2:
        raise UnsupportedPipeline("classifier input width or class count does not match")
    if type(classifier) is LogisticRegression:
        return {
            "kind": "linear",
            "weights": _floats(classifier.coef_),
            "intercept": float(np.asarray(classifier.intercept_).reshape(-1)[0]),
            "margin": margin,
        }, None
    from xgboost import XGBClassifier

    if type(classifier) is XGBClassifier:
        if classifier.get_params().get("objective") != "binary:logistic":
            raise UnsupportedPipeline(f"xgboost objective {classifier.get_params().get('objective')!r}")
        try:
            iterations = [0, int(classifier.best_iteration) + 1]
        except AttributeError:  # no early stopping: every tree
            iterations = [0, 0]
        return {"kind": "xgboost", "iteration_range": iterations}, bytes(
            classifier.get_booster().save_raw("json")
        )
    raise UnsupportedPipeline(f"classifier {type(classifier).__name__}")


def _calibrator(calibrator: Any) -> dict[str, Any]:
    """sklearn's sigmoid (expit(-(a * s + b))) or its clipped isotonic regression."""
    from sklearn.calibration import _SigmoidCalibration
    from sklearn.isotonic import IsotonicRegression

    if type(calibrator) is _SigmoidCalibration:
        return {"kind": "sigmoid", "a": float(calibrator.a_), "b": float(calibrator.b_)}
    if type(calibrator) is IsotonicRegression and calibrator.out_of_bounds == "clip":
        return {
            "kind": "isotonic",
            "x": _floats(calibrator.X_thresholds_),
            "y": _floats(calibrator.y_thresholds_),
        }
    raise UnsupportedPipeline(f"calibrator {type(calibrator).__name__}")


def export_pipeline(model: Any, columns: Columns, positive_index: int) -> ExportedPredictor:
    """`positive_index`: the column of `predict_proba` that is the positive label's."""
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
    numeric: list[dict[str, Any]] = []
    categorical: list[dict[str, Any]] = []
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
            block = _numeric_block(steps, names, width)
            numeric.extend(block)
            width += len(block)
        elif set(names) <= set(columns.categorical):
            block, block_width = _categorical_block(steps, names, width)
            categorical.extend(block)
            width += block_width
        else:
            raise UnsupportedPipeline(f"a block mixes numeric and categorical columns: {names}")
        covered.extend(names)
    if sorted(covered) != sorted(columns.order):
        raise UnsupportedPipeline("the ColumnTransformer does not use every input column exactly once")
    # A calibrator reads the estimator's decision function when it has one (sklearn's own choice).
    scorer, booster = _classifier(
        classifier, width, margin=calibrator is not None and hasattr(classifier, "decision_function")
    )
    spec = {
        "format": SPEC_FORMAT,
        "width": width,
        "numeric": numeric,
        "categorical": categorical,
        "classifier": scorer,
        "calibrator": None if calibrator is None else _calibrator(calibrator),
        "positive_index": positive_index,
    }
    return ExportedPredictor(spec, booster)
