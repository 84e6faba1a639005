"""params.yaml as typed models, read once per process.

Every block of params.yaml has a model here, and every model forbids unknown keys: a typo or a wrong type
is one error at the start of a stage that names the key (`features.numeric.age.mx: unknown key`), not a
KeyError half-way through a run. The checks that tie blocks together (the positive label is one of the
labels, the primary metric has a rule) live here too, so that each is written once.

    python -m stages.params mlflow.model_name      # prints one value (the Makefile reads names this way)
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from stages.errors import StageError, run
from stages.workspace import workspace

PARAMS_FILE = "params.yaml"
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class ParamsError(StageError, ValueError):
    """params.yaml cannot be read or does not describe a valid pipeline."""


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Block):
    raw: Path
    prepared: Path
    model: Path
    validation: Path
    candidates: Path
    metrics: Path
    slices: Path
    intervals: Path
    drift: Path
    registry_report: Path
    training_run: Path
    plots: Path
    predictions: Path
    registered: Path
    retrain: Path
    retrain_batch: Path
    retrain_production: Path


class Read(Block):
    """How prepare reads a delimited file (a .parquet file carries its own types and names)."""

    delimiter: Annotated[str, Field(min_length=1)] = ","
    header: bool = True
    index_column: int | None = None
    # Column names for a file without a header; empty: column_1 ... column_N.
    names: list[str] = []
    # Only these mean missing (and an empty field); pandas' own list ("NA", "n/a", "null", ...) is off.
    missing_markers: list[str] = []

    @model_validator(mode="after")
    def _names_need_no_header(self) -> Read:
        if self.names and self.header:
            raise ValueError("names are for a file without a header: set header: false")
        return self


class Data(Block):
    source: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    read: Read = Read()
    drop_columns: list[str] = []
    sample_rows: Annotated[int, Field(gt=0)] | None = None


class NumericFeature(Block):
    dtype: Literal["int64", "float64"]
    min: float
    max: float
    max_missing: Fraction = 0.0

    @model_validator(mode="after")
    def _range(self) -> NumericFeature:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.max_missing > 0 and self.dtype == "int64":
            raise ValueError("an int64 column cannot hold missing values: use dtype float64")
        return self


class CategoricalFeature(Block):
    categories: Annotated[list[str], Field(min_length=1)]
    max_missing: Fraction = 0.0


# A label in the target's own type: text, a whole number (0/1, 1/2) or a boolean. StrictBool first, so
# that `true` stays a boolean and `1` an integer.
Label = StrictBool | StrictInt | StrictStr


class Features(Block):
    target: str
    positive_label: Label
    labels: Annotated[list[Label], Field(min_length=2, max_length=2)]
    # P(positive) above this is the positive label: the classifiers' own `predict` rule at 0.5.
    decision_threshold: OpenFraction = 0.5
    numeric: dict[str, NumericFeature] = {}
    categorical: dict[str, CategoricalFeature] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Features:
        if len({type(label) for label in self.labels}) != 1 or len(set(self.labels)) != 2:
            raise ValueError(f"labels {self.labels} must be two different values of one type")
        if type(self.positive_label) is not type(self.labels[0]) or self.positive_label not in self.labels:
            raise ValueError(f"positive_label {self.positive_label!r} is not one of the labels {self.labels}")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"{both} are declared both numeric and categorical")
        if self.target in self.numeric or self.target in self.categorical:
            raise ValueError(f"the target {self.target!r} is also declared as a feature")
        if not self.numeric and not self.categorical:
            raise ValueError("no feature is declared")
        return self

    @property
    def names(self) -> list[str]:
        """Every model input, numeric first, in declaration order: the model's column order."""
        return [*self.numeric, *self.categorical]

    @property
    def negative_label(self) -> Label:
        return next(label for label in self.labels if label != self.positive_label)


class Prepare(Block):
    seed: int
    val_fraction: OpenFraction
    test_fraction: OpenFraction

    @model_validator(mode="after")
    def _room_for_training(self) -> Prepare:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction leaves no rows for training")
        return self


class Band(Block):
    min: Fraction
    max: Fraction


class Validate(Block):
    min_rows: dict[Split, Annotated[int, Field(ge=1)]]
    positive_fraction: Band

    @model_validator(mode="after")
    def _every_split(self) -> Validate:
        missing = [split for split in SPLITS if split not in self.min_rows]
        if missing:
            raise ValueError(f"min_rows has no floor for {missing}")
        return self


class LogregParams(Block):
    C: Annotated[float, Field(gt=0)] = 1.0
    max_iter: Annotated[int, Field(gt=0)] = 100


class XGBoostParams(Block):
    n_estimators: Annotated[int, Field(gt=0)]  # a ceiling when train.early_stopping is set
    max_depth: Annotated[int, Field(ge=1)]
    learning_rate: Annotated[float, Field(gt=0)]
    subsample: Annotated[float, Field(gt=0, le=1)] = 1.0
    colsample_bytree: Annotated[float, Field(gt=0, le=1)] = 1.0
    min_child_weight: Annotated[float, Field(ge=0)] = 1.0
    reg_lambda: Annotated[float, Field(ge=0)] = 1.0
    reg_alpha: Annotated[float, Field(ge=0)] = 0.0
    gamma: Annotated[float, Field(ge=0)] = 0.0
    n_jobs: Annotated[int, Field(ge=1)] = 1


Family = Literal["logreg", "xgboost"]


class EarlyStopping(Block):
    """XGBoost stops when logloss on a seeded split carved out of train has not improved for `rounds`."""

    rounds: Annotated[int, Field(ge=1)]
    fraction: Annotated[float, Field(gt=0, lt=1)]


class Train(Block):
    seed: int
    candidates: Annotated[list[Family], Field(min_length=1)]
    selection_metric: str
    early_stopping: EarlyStopping | None = None
    # After selection, the chosen family is refitted on train + validation (rounds scaled).
    refit: bool = True
    calibration: Literal["none", "sigmoid", "isotonic"] = "none"
    logreg: LogregParams = LogregParams()
    xgboost: XGBoostParams | None = None

    @model_validator(mode="after")
    def _settings_for_every_candidate(self) -> Train:
        if "xgboost" in self.candidates and self.xgboost is None:
            raise ValueError("xgboost is a candidate but train.xgboost is not set")
        return self

    def settings(self, family: Family) -> dict[str, Any]:
        """The estimator's keyword arguments for a family, as written in params.yaml."""
        block = self.xgboost if family == "xgboost" else self.logreg
        assert block is not None  # the validator above
        return block.model_dump()


class Evaluate(Block):
    slices: list[str] = []
    calibration_bins: Annotated[int, Field(ge=2)] = 10
    # Groups with fewer positives or negatives than this are reported, but left out of the gated
    # fairness figures: their rates are noise.
    min_group_size: Annotated[int, Field(ge=1)] = 50
    bootstrap_resamples: Annotated[int, Field(ge=0)] = 1000


class SearchDimension(Block):
    """One hyperparameter's range for Optuna: floats (log-uniform with `log: true`) or integers."""

    type: Literal["float", "int"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> SearchDimension:
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log-uniform range starts above 0")
        return self


class Tune(Block):
    """`make tune`: an Optuna study over each family's space, scored by cross-validation on train."""

    n_trials: Annotated[int, Field(ge=1)] = 50
    folds: Annotated[int, Field(ge=2)] = 5
    seed: int = 42
    space: dict[Family, dict[str, SearchDimension]] = {}


class Aliases(Block):
    development: str
    staging: str
    production: str


class Mlflow(Block):
    experiment: str
    model_name: str  # the served model: only promoted copies, moved by cd's production credentials
    candidate_model_name: str  # every registered version, where CI may register and stage
    aliases: Aliases

    @model_validator(mode="after")
    def _two_models(self) -> Mlflow:
        if self.candidate_model_name == self.model_name:
            raise ValueError("candidate_model_name must differ from model_name: CI may edit only candidates")
        return self


class MetricRule(Block):
    """One metric's rule, one record: which way is better, an absolute floor (a ceiling when lower is
    better), and how far it may move the wrong way against main before the CI gate fails."""

    direction: Literal["higher", "lower"] = "higher"
    floor: float | None = None
    tolerance: Annotated[float, Field(ge=0)] | None = None


FAIRNESS_METRICS = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")


class Quality(Block):
    primary_metric: str
    promotion_margin: Annotated[float, Field(ge=0)] = 0.0
    metrics: dict[str, MetricRule]
    # One record per fairness figure, applied to every attribute in evaluate.slices: the rule for
    # `equalized_odds_difference` gates `fairness.<attribute>.equalized_odds_difference` for each.
    fairness: dict[Literal[FAIRNESS_METRICS], MetricRule] = {}  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _primary_has_a_rule(self) -> Quality:
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} has no record under quality.metrics")
        return self

    def rules(self, slices: list[str]) -> dict[str, MetricRule]:
        """Every gated metric by its name in metrics.json: the metrics' own records, then each fairness
        record once per sensitive attribute (none when there are no slices)."""
        expanded = {
            f"fairness.{attribute}.{name}": rule
            for attribute in slices
            for name, rule in self.fairness.items()
        }
        return {**self.metrics, **expanded}


class Drift(Block):
    """PSI bands, checked by the service's alert rules through the registered version's tags."""

    warning: Annotated[float, Field(gt=0)]
    alert: Annotated[float, Field(gt=0)]
    min_window_rows: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> Drift:
        if self.warning >= self.alert:
            raise ValueError(f"warning {self.warning} must be below alert {self.alert}")
        return self


class Retrain(Block):
    """`make retrain`: what a batch of labelled feedback must be before it is appended to the data. Its
    label balance is checked against `validate.positive_fraction`, the same band as the splits'."""

    # Fewer new rows than this are not worth a retrain (and their balance is noise).
    min_rows: Annotated[int, Field(ge=1)] = 200
    # Feedback whose request id has no logged prediction has no features. Some is expected (the
    # inference log's retention deleted it, or a full queue dropped it); much means ids are wrong.
    max_unknown_fraction: Fraction = 0.1


class Params(Block):
    paths: Paths
    data: Data
    features: Features
    prepare: Prepare
    # `validate` is also a (deprecated) BaseModel method: the block is read under its YAML name.
    validation: Validate = Field(alias="validate")
    train: Train
    evaluate: Evaluate
    tune: Tune = Tune()
    mlflow: Mlflow
    quality: Quality
    drift: Drift
    retrain: Retrain = Retrain()

    @model_validator(mode="after")
    def _columns_exist(self) -> Params:
        unknown = [name for name in self.evaluate.slices if name not in self.features.names]
        if unknown:
            raise ValueError(f"evaluate.slices names {unknown}, which are not features")
        return self


def _location(error: ErrorDetails) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def describe(error: ValidationError, source: str) -> str:
    """pydantic's errors as one line per key: `params.yaml: features.labels: ...`."""
    lines = []
    for item in error.errors(include_url=False):
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{source}: {_location(item)}: {message}")
    return "\n".join(lines)


def parse(raw: Any, source: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(describe(error, source)) from None


def parse_quality(raw: Any, source: str) -> Quality:
    """Only the `quality` block, as a committed params.yaml holds it (register's bar inside experiments)."""
    try:
        return Quality.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(describe(error, f"{source} quality")) from None


def read_yaml(text: str, source: str) -> Any:
    """YAML 1.2, as DVC reads params.yaml (ruamel): `yes` is a string here as it is there."""
    from ruamel.yaml import YAML, YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise ParamsError(f"{source} is not valid YAML: {error}") from None


@cache
def load_params() -> Params:
    """The workspace's params.yaml, validated; cached, so a stage reads it once."""
    file = workspace() / PARAMS_FILE
    try:
        text = file.read_text()
    except OSError as error:
        raise ParamsError(f"cannot read {file}: {error}") from None
    return parse(read_yaml(text, PARAMS_FILE))


def lookup(dotted: str) -> Any:
    """One value by its dotted name, e.g. `mlflow.aliases.production`."""
    node: Any = load_params().model_dump(mode="json", by_alias=True)
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{PARAMS_FILE} has no {dotted}")
        node = node[part]
    return node


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    if len(names) != 1:
        print("usage: python -m stages.params <dotted.name>", file=sys.stderr)
        return 2
    try:
        value = lookup(names[0])
    except ParamsError as error:
        print(error, file=sys.stderr)
        return 1
    print(value if isinstance(value, str) else json.dumps(value))
    return 0


if __name__ == "__main__":
    run(main, "params")
