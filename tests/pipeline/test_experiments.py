"""`dvc exp run` and queued sweeps land in the repository's MLflow store under their DVC names, and the
same stages log to a real MLflow tracking server."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.support.pipeline import copy_repository, run, sample_params, set_params
from tests.support.processes import subprocess_env

pytestmark = pytest.mark.slow


def dvc(workdir, *args: str, timeout: float = 600, output: Path | None = None) -> subprocess.CompletedProcess:
    """DVC with the environment a user has: no MLFLOW_TRACKING_URI, so the default store is used. With
    `output`, what it prints goes to that file, not to a pipe: a command that leaves a process behind
    (`dvc queue start` detaches its workers, which inherit its output) would keep a pipe open, and
    waiting for its end would wait for the workers."""
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    if output is None:
        result = subprocess.run(
            ["dvc", *args], cwd=workdir, capture_output=True, text=True, env=env, timeout=timeout
        )
    else:
        with output.open("w") as sink:
            result = subprocess.run(
                ["dvc", *args], cwd=workdir, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=timeout
            )
        result.stdout, result.stderr = output.read_text(), ""
    assert result.returncode == 0, f"dvc {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def experiment_names(workdir) -> dict[str, dict]:
    """{experiment name: its params and metrics} from `dvc exp show --json`."""
    shown = json.loads(dvc(workdir, "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            found[experiment["name"]] = {"params": data["params"]["params.yaml"]["data"],
                                         "metrics": data["metrics"]}  # fmt: skip
    return found


def test_queued_and_workspace_experiments_all_land_in_the_repository_store(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    set_params(workdir, sample_params(), commit=True)  # queued runs copy only what git tracks
    baseline = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True
    ).stdout.strip()

    dvc(workdir, "exp", "run", "--queue", "-S", "train.xgboost.n_estimators=20,40")
    dvc(workdir, "queue", "start", "-j", "2", output=tmp_path / "queue-start.log")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = dvc(workdir, "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
    finally:
        dvc(workdir, "queue", "stop")  # the workers, which outlive the queue they ran now and then
    failed = [line.split()[1] for line in status.splitlines() if " Failed" in line]
    assert not failed, status + "".join(dvc(workdir, "queue", "logs", name).stdout for name in failed)
    dvc(workdir, "exp", "run", "-S", "train.xgboost.max_depth=3")

    experiments = experiment_names(workdir)
    assert len(experiments) == 3, experiments
    estimators = sorted(e["params"]["train"]["xgboost"]["n_estimators"] for e in experiments.values())
    default = yaml.safe_load((workdir / "params.yaml").read_text())["train"]["xgboost"]["n_estimators"]
    assert estimators == sorted([20, 40, default]), "the workspace run keeps the default"
    assert all("roc_auc" in e["metrics"]["data/metrics.json"]["data"] for e in experiments.values())

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    parents = client.search_runs(
        [client.get_experiment_by_name("adult-income").experiment_id], "tags.model_sha256 != ''"
    )
    assert sorted(run.data.tags["dvc_exp_name"] for run in parents) == sorted(experiments)
    assert {run.info.run_name for run in parents} == set(experiments)
    assert {run.data.tags["git_sha"] for run in parents} == {baseline}
    versions = client.search_model_versions("name = 'adult-income-candidates'")
    assert sorted(version.tags["dvc_exp_name"] for version in versions) == sorted(experiments)
    # Artifacts of runs made in the deleted temp copies live under the repository, not in the copies.
    assert len(list((workdir / "mlruns").rglob("MLmodel"))) >= 6
    assert not list((workdir / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))


def test_the_pipeline_logs_to_a_tracking_server_with_proxied_artifacts(mlflow_tracking_server, tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    set_params(workdir, sample_params(), commit=True)
    run(workdir, mlflow_tracking_server.url, "dvc", "repro")
    run(workdir, mlflow_tracking_server.url, "python", "-m", "stages.registry", "promote", "--first")

    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_server.url)
    version = client.get_model_version_by_alias("adult-income", "production")
    assert version.tags["git_sha"] and version.tags["metric.roc_auc"]
    training_run = client.get_run(version.tags["training_run_id"])
    assert training_run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = {path.name for path in mlflow_tracking_server.artifacts_dir.rglob("*")}
    assert {"MLmodel", "model.skops", "predictor.json", "roc.png"} <= stored
