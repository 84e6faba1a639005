"""Turn a predictor spec (api/fast/export.py) into a FastPredictor, with no sklearn and no unpickling.

The spec is plain data: per numeric column its imputed fill, mean and scale; per categorical column a map
from category to one-hot output column; then the classifier (a dot product and a logistic function, or
XGBoost's own JSON booster, walked by a numba-compiled loop, or numpy without numba, for a few rows) and
an optional calibrator. `compile_spec` replays them with plain Python and numpy. A spec it cannot replay
exactly raises `UnsupportedPipeline`.
`compile_predictor` is the same from a fitted pipeline (export then compile), for tests and for the
pickle path that ALLOW_PICKLE_MODELS allows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from api.fast.compiled import compile_walk
from api.fast.export import SPEC_FORMAT, export_pipeline
from api.fast.predictor import CategoricalColumn, FastPredictor, NumericColumn, Scorer, UnsupportedPipeline
from api.fast.trees import TreeEnsemble, UnsupportedBooster, sigmoid
from api.predictor import Columns

__all__ = ["UnsupportedPipeline", "compile_predictor", "compile_spec"]

# Up to this many rows, walking the trees with numpy beats the booster's fixed per-call cost.
FEW_ROWS = 8
# Up to this many rows the compiled walk (api/fast/compiled.py) beats the booster; without numba, FEW_ROWS
# and the numpy walk apply. CPU µs per call on the Adult model (336 trees of depth 5, 107 inputs), one
# thread, distinct rows on every call (`python -m tests.benchmarks.tree_walk`):
#     rows   numpy walk   compiled walk   inplace_predict
#        1           43             6.5               165
#        8          138              44               174
#       32          466             160               230
#       48          695             242               291
#       64          966             336               365
#      100         1534             552               436
#     1000        18689            4867              2568
# The booster costs about 0.15 ms a call and 2.4 µs a row, the walk 5 µs a row: they cross at about 75
# rows. More or deeper trees raise both per-row costs and so lower the crossover; a wrong guess costs
# speed only, since the load-time parity check runs batches on both sides of it.
COMPILED_ROWS = 64


class _Spec:
    """Typed reads of an untrusted spec: a missing or mistyped field is an UnsupportedPipeline that names
    it, never a KeyError or TypeError from deep inside."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise UnsupportedPipeline(f"{where}: expected an object, found {type(data).__name__}")
        self.data, self.where = data, where

    def get(self, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            value = object()  # a boolean is an int to Python, never a number here
        if not isinstance(value, kind):
            raise UnsupportedPipeline(f"{self.where}.{key}: {value!r} is not {kind}")
        return value

    def number(self, key: str, optional: bool = False) -> float:
        value = self.get(key, (int, float), optional)
        return math.nan if value is None else float(value)

    def floats(self, key: str) -> np.ndarray:
        values = self.get(key, list)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise UnsupportedPipeline(f"{self.where}.{key}: not a list of numbers")
        array = np.asarray(values, dtype=np.float64)
        if not np.isfinite(array).all():
            raise UnsupportedPipeline(f"{self.where}.{key}: holds a non-finite number")
        return array

    def child(self, key: str, optional: bool = False) -> _Spec | None:
        value = self.data.get(key)
        if value is None and optional:
            return None
        return _Spec(value, f"{self.where}.{key}")

    def items(self, key: str) -> list[_Spec]:
        return [_Spec(item, f"{self.where}.{key}[{i}]") for i, item in enumerate(self.get(key, list))]


def _linear(spec: _Spec, width: int) -> Scorer:
    weights, intercept = spec.floats("weights"), spec.number("intercept")
    if weights.shape != (width,) or not math.isfinite(intercept):
        raise UnsupportedPipeline(f"linear classifier: {weights.size} weights for {width} inputs")
    if spec.get("margin", bool):
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


def _boosted(spec: _Spec, booster_json: bytes | None, width: int, complete_rows: bool) -> Scorer:
    from xgboost import Booster

    if booster_json is None:
        raise UnsupportedPipeline("an xgboost classifier without its booster")
    iterations = spec.get("iteration_range", list)
    if len(iterations) != 2 or not all(type(i) is int and i >= 0 for i in iterations):
        raise UnsupportedPipeline(f"xgboost iteration range {iterations!r}")
    try:
        learner = json.loads(booster_json)["learner"]
        objective = learner["objective"]["name"]
        features = int(learner["learner_model_param"]["num_feature"])
    except (ValueError, KeyError, TypeError) as error:
        raise UnsupportedPipeline(f"booster.json is not an XGBoost JSON model: {error!r}") from None
    if objective != "binary:logistic" or features != width:
        raise UnsupportedPipeline(f"xgboost objective {objective!r} on {features} features, not {width}")
    # XGBoost's own JSON format: data, read by XGBoost's own parser (never a pickle).
    booster = Booster(model_file=bytearray(booster_json))
    # A loaded booster would use every core: on a small box that means latency spikes.
    booster.set_param({"nthread": 1})
    iteration_range = (iterations[0], iterations[1])

    def booster_score(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(
            booster.inplace_predict(
                matrix, iteration_range=iteration_range, missing=np.nan, validate_features=False
            )
        )

    def booster_one(row: np.ndarray) -> float:
        return float(booster_score(row[None, :])[0])

    try:
        trees = TreeEnsemble(booster, iteration_range)
    except UnsupportedBooster:
        return Scorer("fast-xgboost", booster_score, booster_one)

    walk = compile_walk(trees, width)
    if walk is not None:

        def compiled(matrix: np.ndarray) -> np.ndarray:
            return walk.predict(matrix) if matrix.shape[0] <= COMPILED_ROWS else booster_score(matrix)

        return Scorer("fast-xgboost", compiled, walk.predict_row, batch_limits=(COMPILED_ROWS,))

    def boosted(matrix: np.ndarray) -> np.ndarray:
        return trees.predict(matrix) if matrix.shape[0] <= FEW_ROWS else booster_score(matrix)

    def boosted_one(row: np.ndarray) -> float:
        return float(boosted(row[None, :])[0])

    one = trees.predict_row if trees.levels is not None and complete_rows else boosted_one
    return Scorer("fast-xgboost", boosted, one, batch_limits=(FEW_ROWS,))


def _calibrated(scorer: Scorer, spec: _Spec) -> Scorer:
    """The scorer followed by the calibrator CalibratedClassifierCV fitted on its output."""
    kind = spec.get("kind", str)
    matrix: Callable[[np.ndarray], np.ndarray]
    row: Callable[[np.ndarray], float]
    if kind == "sigmoid":
        a, b = spec.number("a"), spec.number("b")

        def matrix(encoded: np.ndarray) -> np.ndarray:
            return np.asarray(1.0 / (1.0 + np.exp(a * scorer.matrix(encoded) + b)))

        def row(encoded: np.ndarray) -> float:
            return sigmoid(-(a * scorer.row(encoded) + b))

    elif kind == "isotonic":
        xs, ys = spec.floats("x"), spec.floats("y")
        if xs.shape != ys.shape or xs.size == 0 or (np.diff(xs) < 0).any():
            raise UnsupportedPipeline("isotonic calibrator: thresholds unsorted or of unequal lengths")

        def matrix(encoded: np.ndarray) -> np.ndarray:
            return np.asarray(np.interp(scorer.matrix(encoded), xs, ys))

        def row(encoded: np.ndarray) -> float:
            return float(np.interp(scorer.row(encoded), xs, ys))

    else:
        raise UnsupportedPipeline(f"calibrator {kind!r}")
    return Scorer(f"{scorer.kind}-calibrated", matrix, row, scorer.batch_limits)


def compile_spec(data: Any, booster_json: bytes | None, columns: Columns) -> FastPredictor:
    """The FastPredictor a spec describes, for requests with `columns` (the model's signature): the spec
    must use every one of them exactly once, each as the signature types it, and nothing else."""
    spec = _Spec(data, "predictor")
    if spec.get("format", str) != SPEC_FORMAT:
        raise UnsupportedPipeline(f"predictor format {data.get('format')!r}, expected {SPEC_FORMAT!r}")
    width = spec.get("width", int)
    numeric = []
    for item in spec.items("numeric"):
        position = item.get("position", int)
        if not 0 <= position < width:
            raise UnsupportedPipeline(f"{item.where}: position {position} outside {width} inputs")
        mean, scale = item.number("mean"), item.number("scale")
        if not (math.isfinite(mean) and math.isfinite(scale)) or scale == 0:
            raise UnsupportedPipeline(f"{item.where}: mean {mean} and scale {scale}")
        numeric.append(NumericColumn(item.get("name", str), position, item.number("fill", True), mean, scale))
    categorical = []
    for item in spec.items("categorical"):
        positions: dict[Any, int] = {}
        for pair in item.get("positions", list):
            if not (
                isinstance(pair, list) and len(pair) == 2 and type(pair[1]) is int and 0 <= pair[1] < width
            ):
                raise UnsupportedPipeline(f"{item.where}: {pair!r} is not [category, position]")
            if not isinstance(pair[0], str | int | float) or pair[0] in positions:
                raise UnsupportedPipeline(f"{item.where}: category {pair[0]!r} repeated or not a value")
            positions[pair[0]] = pair[1]
        fill = item.data.get("fill")
        if fill is not None and not isinstance(fill, str | int | float):
            raise UnsupportedPipeline(f"{item.where}: fill {fill!r}")
        categorical.append(CategoricalColumn(item.get("name", str), fill, positions))
    names = ([c.name for c in numeric], [c.name for c in categorical])
    if sorted(names[0]) != sorted(columns.numeric) or sorted(names[1]) != sorted(columns.categorical):
        raise UnsupportedPipeline(
            f"the predictor's columns {names} are not the signature's {columns.numeric, columns.categorical}"
        )
    complete_rows = all(math.isfinite(column.fill) for column in numeric)
    classifier = spec.child("classifier")
    assert classifier is not None
    kind = classifier.get("kind", str)
    if kind == "linear":
        scorer = _linear(classifier, width)
    elif kind == "xgboost":
        scorer = _boosted(classifier, booster_json, width, complete_rows)
    else:
        raise UnsupportedPipeline(f"classifier {kind!r}")
    calibrator = spec.child("calibrator", optional=True)
    if calibrator is not None:
        scorer = _calibrated(scorer, calibrator)
    positive_index = spec.get("positive_index", int)
    if positive_index not in (0, 1):
        raise UnsupportedPipeline(f"positive index {positive_index}")
    return FastPredictor(width, numeric, categorical, scorer, positive_index == 0)


def compile_predictor(model: Any, columns: Columns, positive_index: int) -> FastPredictor:
    """The fitted pipeline `model` read into a spec and compiled: what its serving artifact would give."""
    exported = export_pipeline(model, columns, positive_index)
    # Through JSON text, as the artifact goes: what is served is what was written.
    return compile_spec(json.loads(json.dumps(exported.spec)), exported.booster, columns)
