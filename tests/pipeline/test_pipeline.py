"""`dvc repro` end to end on a sample: every stage, MLflow runs, the registry, and reproducibility."""

from __future__ import annotations

import json
import shutil
import subprocess

import mlflow
import pandas as pd
import pytest
import yaml

from api.drift import probability_proportions
from api.monitoring import MONITORING_TAG, parse_monitoring
from tests.support.pipeline import SAMPLE_FLOORS, run
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def client(trained_pipeline, monkeypatch) -> mlflow.MlflowClient:
    """A client on the pipeline's store; module-level mlflow calls in the test go there too."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_pipeline.tracking_uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(trained_pipeline.tracking_uri)
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(previous)


def head_sha(workdir) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def test_every_stage_writes_its_outputs(trained_pipeline):
    data = trained_pipeline.workdir / "data"
    expected = [
        "prepared/train.parquet", "prepared/val.parquet", "prepared/test.parquet",
        "reports/validation.json", "reports/candidates.json", "model/model.pkl", "model/feature_metadata.json",
        "metrics.json", "predictions/test.parquet", "registered.json", "reports/slices.json", "reports/registry.json",
        "reports/intervals.json", "reports/drift.json",
        *(f"plots/{name}.json" for name in ("roc", "pr", "confusion", "calibration", "importance")),
    ]  # fmt: skip
    assert [name for name in expected if not (data / name).is_file()] == []
    metrics = json.loads((data / "metrics.json").read_text())
    assert set(metrics) == {
        "roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier", "ece", "fairness"
    }  # fmt: skip
    assert set(metrics["fairness"]) == {"gender", "race"}
    assert set(metrics["fairness"]["gender"]) == {
        "demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference"
    }  # fmt: skip
    intervals = json.loads((data / "reports" / "intervals.json").read_text())["metrics"]
    low, high = intervals["roc_auc"]
    assert low < metrics["roc_auc"] < high
    slices = json.loads((data / "reports" / "slices.json").read_text())
    assert set(slices) == {"gender", "race"}
    assert set(slices["gender"]) == {"Female", "Male"}
    assert json.loads((data / "reports" / "validation.json").read_text())["passed"] is True


def test_training_is_one_parent_run_with_a_nested_run_per_candidate(trained_pipeline, client):
    experiment = client.get_experiment_by_name("adult-income")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.model_sha256 != ''")
    assert parent.data.tags["git_sha"] == head_sha(trained_pipeline.workdir)
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    candidates = [child for child in children if child.data.tags["role"] == "candidate"]
    assert sorted(child.data.params["family"] for child in candidates) == ["logreg", "xgboost"]
    for child in candidates:
        assert {"val_roc_auc", "val_pr_auc", "val_log_loss"} <= set(child.data.metrics)
    # The chosen family, refitted on train + validation, is what evaluate scores and register registers.
    (refit,) = [child for child in children if child.data.tags["role"] == "refit"]
    assert refit.data.params["family"] == parent.data.tags["chosen_family"]
    chosen = next(child for child in children if child.info.run_id == parent.data.tags["chosen_run_id"])
    assert chosen.info.run_id == refit.info.run_id
    assert "test_roc_auc" in chosen.data.metrics and "test_roc_auc" in parent.data.metrics
    assert any(key.startswith("test_slice.gender.") for key in parent.data.metrics)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "evaluation")}
    assert {"evaluation/roc.png", "evaluation/plots", "evaluation/slices.json"} <= artifacts

    info = mlflow.models.get_model_info(parent.data.tags["chosen_model_uri"])
    assert info.signature is not None and info.saved_input_example_info is not None
    metadata = info.metadata["feature_metadata"]
    assert metadata["feature_order"][0] == "age" and "workclass" in metadata["categorical"]
    assert sum(metadata["numeric"]["age"]["histogram"]["fractions"]) == pytest.approx(1.0, abs=1e-4)


def test_the_model_is_registered_with_lineage_and_moves_by_aliases(trained_pipeline, client):
    (version,) = client.search_model_versions(f"name = '{trained_pipeline.model_name}'")
    lock = yaml.safe_load((trained_pipeline.workdir / "dvc.lock").read_text())
    metrics = json.loads((trained_pipeline.workdir / "data" / "metrics.json").read_text())
    assert version.tags["git_sha"] == head_sha(trained_pipeline.workdir)
    assert version.tags["data_hash"] == lock["stages"]["prepare"]["outs"][0]["md5"]
    assert float(version.tags["metric.roc_auc"]) == metrics["roc_auc"]
    assert version.tags["status"] == "production"
    assert version.tags["replaced_version"] == "none"
    # The served version is a copy of the candidate that register staged, and names it.
    registry = json.loads((trained_pipeline.workdir / "data" / "reports" / "registry.json").read_text())
    assert registry["staging"] is True and registry["model_name"] == "adult-income-candidates"
    assert version.tags["candidate_version"] == registry["version"]
    assert version.source == f"models:/adult-income-candidates/{registry['version']}"
    served = client.get_registered_model(trained_pipeline.model_name)
    assert {alias: str(v) for alias, v in served.aliases.items()} == {"production": str(version.version)}
    candidates = client.get_registered_model("adult-income-candidates")
    assert {alias: str(v) for alias, v in candidates.aliases.items()} == {"development": registry["version"]}


def test_a_fresh_model_shows_no_drift_and_carries_what_the_service_watches_it_with(trained_pipeline, client):
    data = trained_pipeline.workdir / "data"
    params = yaml.safe_load((trained_pipeline.workdir / "params.yaml").read_text())
    names = {*params["features"]["numeric"], *params["features"]["categorical"]}
    # The sample's test split, and the committed report of the full data: PSI against train below 0.1.
    for report_file in (data / "reports" / "drift.json", REPO_ROOT / "data" / "reports" / "drift.json"):
        report = json.loads(report_file.read_text())
        assert set(report["feature_psi"]) == names
        assert max(report["feature_psi"].values()) < 0.1, report_file
        assert report["drifted"] == []
    report = json.loads((data / "reports" / "drift.json").read_text())
    predictions = pd.read_parquet(data / "predictions" / "test.parquet")
    assert report["prediction_reference"] == pytest.approx(
        probability_proportions(predictions["probability"].to_numpy()), abs=1e-6
    )
    # register's tag, copied onto the served version by the promotion, as the service reads it.
    (version,) = client.search_model_versions(f"name = '{trained_pipeline.model_name}'")
    assert len(version.tags[MONITORING_TAG]) < 1000
    monitoring = parse_monitoring(version.tags)
    drift = params["drift"]
    assert monitoring.drift_thresholds == {"warning": drift["warning"], "alert": drift["alert"]}
    assert monitoring.min_window_rows == drift["min_window_rows"]
    assert monitoring.quality_floors == SAMPLE_FLOORS
    assert monitoring.prediction_reference == pytest.approx(report["prediction_reference"])
    assert monitoring.test_metrics["roc_auc"] == json.loads((data / "metrics.json").read_text())["roc_auc"]


def test_running_again_with_nothing_changed_does_nothing(trained_pipeline, client):
    watched = ["dvc.lock", "data/metrics.json", "data/model/model.pkl"]
    before = {name: (trained_pipeline.workdir / name).read_bytes() for name in watched}
    result = run(trained_pipeline.workdir, trained_pipeline.tracking_uri, "dvc", "repro")
    assert "Data and pipelines are up to date." in result.stdout
    assert {name: (trained_pipeline.workdir / name).read_bytes() for name in watched} == before
    assert len(client.search_model_versions(f"name = '{trained_pipeline.model_name}'")) == 1


def test_a_fresh_clone_reproduces_the_committed_lock_byte_for_byte(trained_pipeline, tmp_path):
    """Commit what the pipeline produced, clone it (no DVC cache, new MLflow store), reproduce, compare."""
    source = tmp_path / "source"
    shutil.copytree(trained_pipeline.workdir, source, ignore=shutil.ignore_patterns("cache", "tmp"))
    subprocess.run(["git", "add", "-A"], cwd=source, check=True)
    subprocess.run(["git", "commit", "-qm", "pipeline outputs"], cwd=source, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    assert not (clone / "data" / "prepared").exists()

    run(clone, f"sqlite:///{tmp_path / 'fresh.db'}", "dvc", "repro")
    changed = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True
    ).stdout
    assert changed == ""
