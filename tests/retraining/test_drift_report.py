"""`make drift-report` (stages/drift_report.py): the inference log of the last days against the training
split, on the session's sample pipeline. A log whose `age` moved gives `drift: true` naming it, one drawn
from the test split `drift: false`; both exit 0, and an empty window is an error. The figures are
api/drift.py's, and the HTML renders in a browser that cannot reach the internet."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from api.drift import feature_psi
from stages.drift_report import MIN_FEEDBACK_SAMPLES, MLFLOW_ARTIFACT_DIR
from tests.retraining.logs import write_feedback_log, write_inference_log
from tests.support.browser import offline_chromium
from tests.support.pipeline import PipelineRun
from tests.support.processes import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow

ROWS = 1200  # above params.yaml drift.min_window_rows (1,000), as the alert needs
LABELLED = MIN_FEEDBACK_SAMPLES + 50
SHIFT = 25  # years added to `age` in the drifted log


@dataclass(frozen=True)
class Made:
    result: subprocess.CompletedProcess
    report_dir: Path
    log: Path
    rows: pd.DataFrame

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.report_dir / "latest.json").read_text())


def params(pipeline: PipelineRun) -> dict[str, Any]:
    return yaml.safe_load((pipeline.workdir / "params.yaml").read_text())


def production_version(pipeline: PipelineRun) -> str:
    client = MlflowClient(tracking_uri=pipeline.tracking_uri, registry_uri=pipeline.tracking_uri)
    return str(client.get_model_version_by_alias(pipeline.model_name, "production").version)


def drift_report(pipeline: PipelineRun, log: Path, report_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python", "-m", "stages.drift_report"],
        cwd=pipeline.workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(
            MLFLOW_TRACKING_URI=pipeline.tracking_uri,
            INFERENCE_LOG_DIR=str(log),
            DRIFT_REPORT_DIR=str(report_dir),
            DRIFT_REPORT_DAYS="7",
        ),
    )


def make_report(pipeline: PipelineRun, workdir: Path, drifted: bool) -> Made:
    """A log of ROWS test-split rows scored an hour ago (`age` shifted when drifted), LABELLED of them
    labelled back: predicted right in the undrifted log, all wrong in the drifted one."""
    settings = params(pipeline)
    features = settings["features"]
    numeric, categorical = list(features["numeric"]), list(features["categorical"])
    rows = (
        pd.read_parquet(pipeline.test_split).sample(ROWS, replace=True, random_state=7).reset_index(drop=True)
    )
    if drifted:
        rows["age"] = (rows["age"] + SHIFT).clip(upper=features["numeric"]["age"]["max"])
    positive = (rows[features["target"]] == features["positive_label"]).to_numpy()
    probability = np.where(positive != drifted, 0.9, 0.1)
    log, version = workdir / "inference", production_version(pipeline)
    scored = datetime.now(UTC) - timedelta(hours=1)
    ids = write_inference_log(
        log, pipeline.model_name, version, rows, numeric, categorical, probability,
        tuple(features["labels"]), scored,
    )  # fmt: skip
    # A row older than the window is left out: it would not move a thing if read, so it is extreme.
    old = rows.head(50).assign(age=features["numeric"]["age"]["min"])
    write_inference_log(
        log, pipeline.model_name, version, old, numeric, categorical, probability[:50],
        tuple(features["labels"]), scored - timedelta(days=8),
    )  # fmt: skip
    truth = rows[features["target"]].astype(str).tolist()
    write_feedback_log(
        log / "feedback", pipeline.model_name, version, ids[:LABELLED], truth[:LABELLED],
        scored + timedelta(minutes=5),
    )  # fmt: skip
    report_dir = workdir / "reports"
    return Made(drift_report(pipeline, log, report_dir), report_dir, log, rows)


@pytest.fixture(scope="module")
def drifted(trained_pipeline, tmp_path_factory) -> Made:
    return make_report(trained_pipeline, tmp_path_factory.mktemp("drifted"), drifted=True)


@pytest.fixture(scope="module")
def undrifted(trained_pipeline, tmp_path_factory) -> Made:
    return make_report(trained_pipeline, tmp_path_factory.mktemp("undrifted"), drifted=False)


# ------------------------------------------------------------------------------------------ the verdicts
def test_a_drifted_log_is_drift_naming_the_feature_and_exits_0(drifted):
    assert drifted.result.returncode == 0, drifted.result.stdout + drifted.result.stderr
    report = drifted.report
    assert report["drift"] is True
    assert report["drifted_features"] == ["age"]
    assert report["features"]["age"]["level"] == "alert"
    assert report["window"]["rows"] == ROWS  # the 8-day-old rows are outside the 7-day window
    assert "DRIFT in age" in drifted.result.stdout


def test_an_undrifted_log_is_no_drift_and_exits_0(undrifted):
    assert undrifted.result.returncode == 0, undrifted.result.stdout + undrifted.result.stderr
    report = undrifted.report
    assert report["drift"] is False
    assert report["drifted_features"] == []
    assert all(item["level"] != "alert" for item in report["features"].values()), report["features"]
    assert "no drift" in undrifted.result.stdout


def test_wrong_answers_labelled_back_are_a_quality_drop_right_ones_are_not(drifted, undrifted):
    wrong, right = drifted.report["quality"], undrifted.report["quality"]
    assert wrong["samples"] == right["samples"] == LABELLED
    assert drifted.report["quality_drop"] is True
    assert set(wrong["below_floor"]) == {"accuracy", "roc_auc"}
    assert undrifted.report["quality_drop"] is False
    assert right["online"]["accuracy"] == 1.0


def test_the_report_writes_stamped_and_latest_files_and_logs_to_the_production_run(drifted, trained_pipeline):
    files = sorted(path.name for path in drifted.report_dir.iterdir())
    stamped = [name for name in files if re.fullmatch(r"\d{8}T\d{6}Z\.(html|json)", name)]
    assert len(stamped) == 2 and {"latest.html", "latest.json"} <= set(files), files
    run_id = drifted.report["model"]["run_id"]
    client = MlflowClient(tracking_uri=trained_pipeline.tracking_uri)
    logged = [item.path for item in client.list_artifacts(run_id, MLFLOW_ARTIFACT_DIR)]
    name = next(name for name in stamped if name.endswith(".json"))
    assert f"{MLFLOW_ARTIFACT_DIR}/{name}" in logged


# ------------------------------------------------------------------------------------------ the figures
def test_the_figures_are_the_services_psi_against_the_model_it_serves(drifted, trained_pipeline):
    metadata = json.loads((trained_pipeline.workdir / "data/model/feature_metadata.json").read_text())
    columns = {
        name: [None if pd.isna(value) else value for value in drifted.rows[name]]
        for name in metadata["feature_order"]
    }
    expected = feature_psi(metadata, columns)
    found = {name: item["psi"] for name, item in drifted.report["features"].items()}
    assert found == pytest.approx(expected, abs=1e-6)


# Evidently's dependencies (plotly, statsmodels) warn as they are imported, not about this project's code.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_evidentlys_drift_scores_are_api_drifts_psi_missing_values_included(trained_pipeline):
    """In process: the scores Evidently's report shows, from the methods registered per feature, for a
    window with missing values (Evidently drops them before a method sees the column)."""
    from stages.drift_report import evidently_report

    metadata = json.loads((trained_pipeline.workdir / "data/model/feature_metadata.json").read_text())
    names = metadata["feature_order"]
    frame = pd.read_parquet(trained_pipeline.test_split)
    reference = frame[names].head(300).astype({name: "float64" for name in metadata["numeric"]})
    current = frame[names].tail(200).astype({name: "float64" for name in metadata["numeric"]}).copy()
    current = current.astype({name: object for name in metadata["categorical"]})
    current.iloc[:40, current.columns.get_loc("workclass")] = np.nan
    current.iloc[:30, current.columns.get_loc("hours_per_week")] = np.nan
    _, shown = evidently_report(reference, current.reset_index(drop=True), metadata, 0.25)
    columns = {name: [None if pd.isna(value) else value for value in current[name]] for name in names}
    assert shown == pytest.approx(feature_psi(metadata, columns), rel=1e-12)


# ------------------------------------------------------------------------------------------ the HTML
def test_the_html_renders_offline_in_headless_chromium(drifted, tmp_path):
    page_html = drifted.report_dir / "latest.html"
    assert '<script src="http' not in page_html.read_text()
    with offline_chromium(tmp_path) as page:
        drawn = "document.querySelectorAll('.js-plotly-plot, svg').length"
        visit = page.visit(
            page_html.as_uri(), ready=f"{drawn} > 0 && document.body.innerText.includes('age')"
        )
        text = page.evaluate("document.body.innerText")
        screenshot = page.screenshot(tmp_path / "drift.png")
    assert visit.foreign_hosts() == set(), visit.requests
    assert visit.errors == []
    assert "Drift" in text
    assert screenshot.stat().st_size > 10_000, "a blank page"


# ------------------------------------------------------------------------------------------ errors
def test_no_rows_in_the_window_is_an_error_that_says_so(trained_pipeline, tmp_path):
    empty = tmp_path / "inference"
    empty.mkdir()
    result = drift_report(trained_pipeline, empty, tmp_path / "reports")
    assert result.returncode == 1
    assert "no rows of" in result.stderr and "DRIFT_REPORT_DAYS=7" in result.stderr, result.stderr
    assert not (tmp_path / "reports").exists()


def test_the_feedback_minimum_is_the_alerts():
    rule = (REPO_ROOT / "monitoring/prometheus/rules/feedback.yml").read_text()
    assert f"job:model_online_samples:increase1h >= {MIN_FEEDBACK_SAMPLES}" in rule


def test_the_settings_read_s3_logs_and_the_mlflow_switch_and_refuse_what_they_cannot_use():
    from stages.drift_report import Settings
    from stages.errors import StageError

    settings = Settings.from_environment(
        {"INFERENCE_LOG_DIR": "s3://logs/production/inference", "DRIFT_REPORT_MLFLOW": "false"}
    )
    assert (settings.inference_log, settings.feedback_log) == (
        "s3://logs/production/inference",
        "s3://logs/production/inference/feedback",
    )
    assert settings.log_to_mlflow is False
    assert Settings.from_environment({"INFERENCE_LOG_DIR": "data/inference"}).log_to_mlflow is True
    for environ, refusal in (
        ({"INFERENCE_LOG_DIR": "gs://logs/inference"}, "INFERENCE_LOG_DIR"),
        ({"INFERENCE_LOG_DIR": "data/inference", "DRIFT_REPORT_MLFLOW": "no"}, "DRIFT_REPORT_MLFLOW"),
    ):
        with pytest.raises(StageError, match=refusal):
            Settings.from_environment(environ)
