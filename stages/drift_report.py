"""drift-report: the last DRIFT_REPORT_DAYS of the inference log against the training split, as an
Evidently report (HTML) and a verdict (JSON) that the retrain workflow branches on.

- Drift: each feature's PSI by the service's own computation (api/drift.py), over the bins the production
  model carries in its `feature_metadata`, registered as Evidently's drift method for that feature, so
  that the report, the JSON and the live `feature_drift_psi` gauges show the same figures. A feature
  drifts above params.yaml `drift.alert`, as `FeatureDrift` fires; and as for the alert, only with at
  least `drift.min_window_rows` rows in the window.
- Quality: the feedback log's labels in the window, joined to the production version's predictions by
  request id, scored by the service's own online metrics (api/online_metrics.py) against the quality
  floors the version carries in its `monitoring` tag, as `OnlineQualityDrop` does.

Writes data/reports/drift/<UTC timestamp>.{html,json} and latest.{html,json}, logs the JSON to the
production version's MLflow run, and prints a verdict. Exits 0 whenever the report was made, whatever
the verdict; 1 on an error (no production model, no log rows in the window, ...).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import yaml
from mlflow.exceptions import MlflowException

from api.drift import (
    PREDICTION,
    PROBABILITY_BINS,
    NumericBins,
    feature_bins,
    feature_psi,
    probability_index,
    psi,
)
from api.monitoring import Monitoring, parse_monitoring
from api.online_metrics import figures
from stages.errors import StageError, run
from stages.features import model_inputs
from stages.logs import log_dataset, log_locations
from stages.params import Params, load_params
from stages.registry import open_registry
from stages.workspace import workspace

DEFAULT_DAYS = 7
REPORT_DIR = "data/reports/drift"  # git-ignored; DRIFT_REPORT_DIR moves it
MLFLOW_ARTIFACT_DIR = "drift_reports"
# OnlineQualityDrop (monitoring/prometheus/rules/feedback.yml) pages only on at least this many matched
# feedback items, and compares these online figures with their floors: fewer items are too noisy to act
# on. tests/retraining/test_drift_report.py checks that the rule says the same.
MIN_FEEDBACK_SAMPLES = 200
FLOORED_ONLINE_FIGURES = ("accuracy", "roc_auc")
STAT_TEST_PREFIX = "fast_mlops_psi:"
DIGITS = 6


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    days: int
    inference_log: str  # a directory or an s3:// URI (api/log_store.py), as the service writes it
    feedback_log: str
    report_dir: Path
    log_to_mlflow: bool = True  # DRIFT_REPORT_MLFLOW=false: a reader that may not write runs (retrain.yml)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        text = environ.get("DRIFT_REPORT_DAYS", "") or str(DEFAULT_DAYS)
        try:
            days = int(text)
        except ValueError:
            days = 0
        if days < 1:
            raise StageError(f"DRIFT_REPORT_DAYS must be a whole number of days, at least 1, not {text!r}")
        # Its default has one home, the Makefile's INFERENCE_LOG_DIR (where `make run` has the service log).
        if not environ.get("INFERENCE_LOG_DIR"):
            raise StageError("INFERENCE_LOG_DIR is unset: name the inference log (`make drift-report` does)")
        inference, feedback = log_locations(environ["INFERENCE_LOG_DIR"], environ)
        report_dir = Path(environ.get("DRIFT_REPORT_DIR", "") or REPORT_DIR)
        switch = environ.get("DRIFT_REPORT_MLFLOW", "") or "true"
        if switch not in ("true", "false"):
            raise StageError(f"DRIFT_REPORT_MLFLOW must be true or false, not {switch!r}")
        return cls(days, inference, feedback, workspace() / report_dir, switch == "true")


# ---------------------------------------------------------------------------------------------- the logs
def window_filter(model_name: str, start: datetime) -> Any:
    """This model's rows since `start`: whole date partitions are pruned first, then by `time`."""
    return (
        (ds.field("model_name") == model_name)
        & (ds.field("date") >= start.date().isoformat())
        & (ds.field("time") >= pa.scalar(start, type=pa.timestamp("us", tz="UTC")))
    )


def inference_window(
    settings: Settings, model_name: str, start: datetime, columns: list[str]
) -> pd.DataFrame:
    dataset = log_dataset(settings.inference_log)  # None: no file yet, as good as no row in the window
    missing = [] if dataset is None else [name for name in columns if name not in dataset.schema.names]
    if missing:
        raise StageError(f"the inference log at {settings.inference_log} has no column {', '.join(missing)}")
    table = (
        None
        if dataset is None
        else dataset.to_table(columns=columns, filter=window_filter(model_name, start))
    )
    if table is None or table.num_rows == 0:
        raise StageError(
            f"no rows of {model_name} in the inference log at {settings.inference_log} since "
            f"{start.isoformat(timespec='seconds')} (DRIFT_REPORT_DAYS={settings.days}): nothing to compare"
        )
    return table.to_pandas()


def labelled_predictions(settings: Settings, model_name: str, version: str, start: datetime) -> pd.DataFrame:
    """(probability, label) of this version's predictions whose true label came back in the window: the
    first label of each request id, as /feedback counts a later one as a duplicate."""
    empty = pd.DataFrame({"probability": [], "label": []})
    labels, inference = log_dataset(settings.feedback_log), log_dataset(settings.inference_log)
    if labels is None or inference is None:
        return empty
    feedback = (
        labels.to_table(columns=["request_id", "time", "label"], filter=window_filter(model_name, start))
        .to_pandas()
        .sort_values("time", kind="stable")
        .drop_duplicates("request_id")
    )
    if feedback.empty:
        return empty
    ids = pa.array(feedback["request_id"].tolist(), type=pa.string())
    predictions = (
        inference.to_table(
            columns=["request_id", "probability"],
            filter=(ds.field("model_name") == model_name)
            & (ds.field("model_version") == version)
            & pc.field("request_id").isin(ids),
        )
        .to_pandas()
        .drop_duplicates("request_id")
    )
    return predictions.merge(feedback[["request_id", "label"]], on="request_id")[["probability", "label"]]


# ---------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Production:
    name: str
    version: str
    run_id: str
    metadata: dict[str, Any]  # the model's feature_metadata: the bins the live gauges count into
    monitoring: Monitoring


def production_model() -> Production:
    """The version the service serves: MODEL_NAME@MODEL_ALIAS, as the service reads them (`make serve`
    passes params.yaml's served model and production alias)."""
    names = load_params().mlflow
    registry = open_registry(model_name=os.environ.get("MODEL_NAME") or names.model_name)
    alias = os.environ.get("MODEL_ALIAS") or names.aliases.production
    version = registry.at(alias)
    if version is None:
        raise StageError(f"{registry.model_name} has no '{alias}' version: nothing to compare against")
    number = str(version.version)
    location = registry.client.get_model_version_download_uri(registry.model_name, number)
    with tempfile.TemporaryDirectory(prefix="drift-report-") as workdir:
        # MLmodel alone (YAML, data): its metadata holds the feature_metadata the service loads.
        mlmodel = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=workdir, tracking_uri=registry.uri
        )
        logged = yaml.safe_load(Path(mlmodel).read_text())
    metadata = (logged.get("metadata") or {}).get("feature_metadata")
    if not metadata:
        raise StageError(f"{registry.model_name} v{number} was logged without metadata['feature_metadata']")
    if not version.run_id:
        raise StageError(f"{registry.model_name} v{number} names no run to log the report to")
    return Production(registry.model_name, number, version.run_id, metadata, parse_monitoring(version.tags))


# ---------------------------------------------------------------------------------------------- Evidently
def _evidently() -> Any:
    """Evidently's modules, imported with its telemetry off.

    Evidently 0.7.23 still imports `infer_dtype_from_object` from pandas' internals at import time (in a
    legacy test the drift preset never runs), which pandas 3 removed; without it the import fails. It is
    given a stand-in that refuses to be called, so that a code path that did need it fails loudly."""
    os.environ["DO_NOT_TRACK"] = "1"
    import pandas.core.dtypes.common as dtypes

    if not hasattr(dtypes, "infer_dtype_from_object"):

        def infer_dtype_from_object(dtype: Any) -> Any:
            raise NotImplementedError("pandas 3 has no infer_dtype_from_object (evidently's legacy tests)")

        dtypes.infer_dtype_from_object = infer_dtype_from_object
    import evidently
    import evidently.presets
    from evidently.legacy.calculations.stattests import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    return evidently, evidently.presets, StatTest, register_stattest, ColumnType


def register_psi_methods(metadata: dict[str, Any], window_rows: int, threshold: float) -> dict[str, str]:
    """One Evidently drift method per feature: api/drift.py's PSI of the window over that feature's bins
    in the model's metadata, against the training proportions the model carries (what the live gauges
    compare with). Evidently drops missing values before it calls a method; the missing bin gets them
    back: the window's rows less those the method was handed. Feature -> method name."""
    _, _, StatTest, register_stattest, ColumnType = _evidently()
    methods = {}
    for bins in feature_bins(metadata):
        name = f"{STAT_TEST_PREFIX}{bins.name}"
        numeric = isinstance(bins, NumericBins)

        def method(
            reference: pd.Series,
            current: pd.Series,
            feature_type: Any,
            drift_threshold: float,
            bins: Any = bins,
        ) -> tuple[float, bool]:
            counts = np.bincount(bins.index_many(current.tolist()), minlength=bins.size)
            counts[bins.size - 1] += window_rows - len(current)  # the missing bin is the last of each kind
            value = psi(bins.reference, counts)
            return value, value > drift_threshold  # `>`: as FeatureDrift compares

        register_stattest(
            StatTest(
                name=name,
                display_name="PSI (api/drift.py, the model's training bins)",
                allowed_feature_types=[ColumnType.Numerical if numeric else ColumnType.Categorical],
                default_threshold=threshold,
            ),
            method,
        )
        methods[bins.name] = name
    return methods


def evidently_report(
    reference: pd.DataFrame, current: pd.DataFrame, metadata: dict[str, Any], threshold: float
) -> tuple[Any, dict[str, float]]:
    """The snapshot of a DataDriftPreset over the features that have a value in the window (Evidently
    refuses a column with none), and each of their drift scores as the report shows them."""
    evidently, presets, *_ = _evidently()
    numeric, categorical = list(metadata["numeric"]), list(metadata["categorical"])
    present = [name for name in [*numeric, *categorical] if current[name].notna().any()]
    methods = register_psi_methods(metadata, len(current), threshold)
    definition = evidently.DataDefinition(
        numerical_columns=[name for name in numeric if name in present],
        categorical_columns=[name for name in categorical if name in present],
    )
    preset = presets.DataDriftPreset(
        columns=present,
        per_column_method={name: methods[name] for name in present},
        threshold=threshold,
    )
    snapshot = evidently.Report([preset]).run(
        evidently.Dataset.from_pandas(current[present], data_definition=definition),
        evidently.Dataset.from_pandas(reference[present], data_definition=definition),
    )
    scores = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift"):
            scores[config["column"]] = float(metric["value"])
    return snapshot, scores


# ---------------------------------------------------------------------------------------------- verdict
def level(value: float | None, params: Params) -> str:
    if value is None:
        return "unknown"
    if value > params.drift.alert:
        return "alert"
    return "warning" if value > params.drift.warning else "stable"


def _plain(value: float) -> float | None:
    return round(value, DIGITS) if math.isfinite(value) else None


def quality_verdict(labelled: pd.DataFrame, production: Production) -> dict[str, Any]:
    metadata = production.metadata
    truth = (labelled["label"] == metadata["positive_label"]).to_numpy()
    found = figures(labelled["probability"].to_numpy(dtype=np.float64), truth, metadata["decision_threshold"])
    floors = {
        name: floor
        for name, floor in production.monitoring.quality_floors.items()
        if name in FLOORED_ONLINE_FIGURES
    }
    online = {"accuracy": found.accuracy, "roc_auc": found.roc_auc, "log_loss": found.log_loss}
    enough = found.samples >= MIN_FEEDBACK_SAMPLES
    # NaN (one class only, or no items) never compares below a floor, as in the alert.
    below = sorted(name for name, floor in floors.items() if enough and online[name] < floor)
    return {
        "samples": found.samples,
        "min_samples": MIN_FEEDBACK_SAMPLES,
        "enough_samples": enough,
        "online": {name: _plain(value) for name, value in online.items()},
        "floors": floors,
        "below_floor": below,
    }


def build_report(settings: Settings, params: Params, now: datetime) -> tuple[dict[str, Any], Any]:
    production = production_model()
    metadata = production.metadata
    names = list(metadata.get("feature_order") or [*metadata["numeric"], *metadata["categorical"]])
    if set(names) != set(params.features.names):
        raise StageError(
            f"{production.name} v{production.version} takes other features than params.yaml declares: "
            "the training split cannot be its reference"
        )
    start = now - timedelta(days=settings.days)
    logged = inference_window(settings, production.name, start, [*names, "probability"])
    current = model_inputs(logged, params.features)[names]
    train = pd.read_parquet(workspace() / params.paths.prepared / "train.parquet")
    reference = model_inputs(train, params.features)[names]
    drift = params.drift

    snapshot, shown = evidently_report(reference, current, metadata, drift.alert)
    columns = {name: [None if pd.isna(value) else value for value in current[name]] for name in names}
    computed = feature_psi(metadata, columns)
    for name, value in shown.items():  # the HTML must show what the gauges would: never silently not
        if not math.isclose(value, computed[name], rel_tol=1e-9, abs_tol=1e-12):
            raise StageError(f"Evidently's PSI of {name} ({value}) is not api/drift.py's ({computed[name]})")
    enough_rows = len(current) >= drift.min_window_rows
    features = {
        name: {"psi": round(value, DIGITS), "level": level(value, params), "in_html": name in shown}
        for name, value in computed.items()
    }
    drifted = sorted(name for name, item in features.items() if item["level"] == "alert")
    reference_bins = production.monitoring.prediction_reference
    prediction = None
    if reference_bins is not None:
        counts = np.bincount(probability_index(logged["probability"].to_numpy()), minlength=PROBABILITY_BINS)
        value = psi(np.asarray(reference_bins), counts)
        prediction = {"psi": round(value, DIGITS), "level": level(value, params)}
    quality = quality_verdict(
        labelled_predictions(settings, production.name, production.version, start), production
    )
    report = {
        "created": now.isoformat(timespec="seconds"),
        "model": {"name": production.name, "version": production.version, "run_id": production.run_id},
        "window": {
            "days": settings.days,
            "start": start.isoformat(timespec="seconds"),
            "end": now.isoformat(timespec="seconds"),
            "rows": len(current),
            "min_rows": drift.min_window_rows,
            "enough_rows": enough_rows,
        },
        "reference": {"split": str(params.paths.prepared) + "/train.parquet", "rows": len(reference)},
        "thresholds": {"warning": drift.warning, "alert": drift.alert},
        "drift": enough_rows and bool(drifted),
        "drifted_features": drifted,
        "features": features,
        PREDICTION: prediction,
        "quality_drop": bool(quality["below_floor"]),
        "quality": quality,
    }
    return report, snapshot


def verdict(report: dict[str, Any]) -> str:
    window, quality = report["window"], report["quality"]
    model = f"{report['model']['name']} v{report['model']['version']}"
    worst = max(report["features"].items(), key=lambda item: item[1]["psi"])
    if report["drift"]:
        drift = f"DRIFT in {', '.join(report['drifted_features'])} (PSI > {report['thresholds']['alert']})"
    elif not window["enough_rows"]:
        drift = f"no drift verdict: {window['rows']} rows, under the {window['min_rows']} the alert needs"
    else:
        drift = "no drift"
    if report["quality_drop"]:
        below = ", ".join(
            f"{name} {quality['online'][name]} < {quality['floors'][name]}" for name in quality["below_floor"]
        )
        quality_text = f"QUALITY DROP ({below}, {quality['samples']} labelled)"
    elif not quality["enough_samples"]:
        quality_text = f"no quality verdict: {quality['samples']} labelled, under {quality['min_samples']}"
    else:
        quality_text = "quality above its floors"
    return (
        f"drift-report: {model}, {window['rows']} rows in {window['days']} days: {drift}; "
        f"worst PSI {worst[1]['psi']:.4f} ({worst[0]}); {quality_text}"
    )


def write(report: dict[str, Any], snapshot: Any, directory: Path, now: datetime) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    html, data = directory / f"{stamp}.html", directory / f"{stamp}.json"
    report["html"] = html.name
    snapshot.save_html(str(html))
    data.write_text(json.dumps(report, indent=2) + "\n")
    for source, name in ((html, "latest.html"), (data, "latest.json")):
        # Written beside and renamed: a reader of latest.* never sees half a file.
        partial = directory / f".{name}"
        shutil.copyfile(source, partial)
        os.replace(partial, directory / name)
    return html, data


def main() -> None:
    params = load_params()
    settings = Settings.from_environment()
    now = datetime.now(UTC)
    report, snapshot = build_report(settings, params, now)
    html, data = write(report, snapshot, settings.report_dir, now)
    run_id = report["model"]["run_id"]
    if settings.log_to_mlflow:
        try:
            open_registry().client.log_dict(run_id, report, f"{MLFLOW_ARTIFACT_DIR}/{data.name}")
        except MlflowException as error:
            raise StageError(
                f"{data} is written, but could not be logged to MLflow run {run_id}: {error} "
                "(DRIFT_REPORT_MLFLOW=false writes the files only)"
            ) from None
    print(verdict(report))
    logged = (
        f"logged to run {run_id}"
        if settings.log_to_mlflow
        else "not logged to MLflow (DRIFT_REPORT_MLFLOW=false)"
    )
    print(f"drift-report: {html} and {data} (also latest.*); {logged}")


if __name__ == "__main__":
    run(main, "drift-report")
