"""How a model is fitted (stages/modelling.py) and tuned (stages/tune.py): early stopping inside train,
a refit on train + validation that uses the extra rows, and an Optuna study that resumes after a kill,
logs one nested MLflow run per trial and writes its best parameters into params.yaml, comments intact."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score

from stages.modelling import fit, refit, refit_settings
from stages.params import EarlyStopping, Features
from stages.params_writer import update_params
from tests.support.processes import REPO_ROOT, subprocess_env

FEATURES = Features.model_validate({
    "target": "y", "positive_label": 1, "labels": [0, 1],
    "numeric": {f"x{i}": {"dtype": "float64", "min": -100, "max": 100} for i in range(12)},
})  # fmt: skip
XGBOOST = {"n_estimators": 400, "max_depth": 4, "learning_rate": 0.1, "n_jobs": 1}


def synthetic(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    x, y = make_classification(
        rows, n_features=12, n_informative=8, flip_y=0.05, class_sep=0.7, random_state=seed
    )
    return pd.DataFrame(x, columns=list(FEATURES.numeric)), y


def test_early_stopping_uses_fewer_rounds_than_its_ceiling_and_says_how_many():
    x, y = synthetic(1200, seed=1)
    fitted = fit("xgboost", FEATURES, XGBOOST, EarlyStopping(rounds=20, fraction=0.2), seed=3, x=x, y=y)
    assert fitted.rounds is not None and 1 <= fitted.rounds < XGBOOST["n_estimators"]
    assert fitted.fitted_rows == 960, "the stopping split is carved out of the training rows"
    scaled = refit_settings("xgboost", XGBOOST, fitted, rows=1920)
    assert scaled["n_estimators"] == round(fitted.rounds * 1920 / 960)


def test_the_refit_on_train_and_validation_beats_the_model_fitted_on_train_alone():
    """A task where 600 rows are too few: the refit sees twice as many and must score better on rows
    neither saw."""
    x, y = synthetic(12_600, seed=7)
    train, val, held = slice(0, 600), slice(600, 1200), slice(1200, None)
    stopping = EarlyStopping(rounds=20, fraction=0.2)
    fitted = fit("xgboost", FEATURES, XGBOOST, stopping, seed=3, x=x.iloc[train], y=y[train])
    both_x, both_y = x.iloc[:1200], y[:1200]
    final = refit(
        "xgboost",
        FEATURES,
        refit_settings("xgboost", XGBOOST, fitted, len(both_x)),
        "none",
        3,
        both_x,
        both_y,
    )
    alone = roc_auc_score(y[held], fitted.pipeline.predict_proba(x.iloc[held])[:, 1])
    refitted = roc_auc_score(y[held], final.predict_proba(x.iloc[held])[:, 1])
    assert refitted > alone + 0.005, (alone, refitted)
    del val


@pytest.mark.slow
def test_a_study_resumes_after_a_kill_logs_nested_runs_and_writes_params_with_their_comments(
    trained_pipeline, tmp_path
):
    workdir = tmp_path / "repo"
    shutil.copytree(trained_pipeline.workdir, workdir, symlinks=True)
    shutil.copy(trained_pipeline.tracking_uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    # The repository's own params.yaml (its comments), with a tiny study: through the round-trip writer.
    shutil.copy(REPO_ROOT / "params.yaml", workdir / "params.yaml")
    update_params({"data.sample_rows": 4000, "train.candidates": ["xgboost"], "tune.folds": 2, "tune.space": {"xgboost": {
        "max_depth": {"type": "int", "low": 2, "high": 4},
        "learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True}}},
        "train.xgboost.n_estimators": 60}, workdir / "params.yaml")  # fmt: skip
    comments = [
        line for line in (workdir / "params.yaml").read_text().splitlines() if line.lstrip().startswith("#")
    ]
    assert len(comments) > 20
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", OPTUNA_STORAGE=storage)
    # Enough trials that the kill, sent as soon as one is seen complete, cannot miss the study on a busy machine
    # (with 3, all of them once finished between two polls).
    trials = 12
    command = [sys.executable, "-m", "stages.tune", "--n-trials", str(trials)]

    first = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.poll() is None:
        try:
            done = optuna.load_study(study_name="adult-income-xgboost", storage=storage).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
        except KeyError:  # the study does not exist yet
            done = []
        if done:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    study = optuna.load_study(study_name="adult-income-xgboost", storage=storage)
    completed_before = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    assert 1 <= completed_before < trials, "the kill must land inside the study"

    resumed = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{completed_before} trials done" in resumed.stdout
    study = optuna.load_study(study_name="adult-income-xgboost", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == trials

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("adult-income")
    parents = client.search_runs([experiment.experiment_id], "tags.optuna_study = 'adult-income-xgboost'")
    children = [run for parent in parents for run in client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")]  # fmt: skip
    assert len({child.data.tags["optuna_trial"] for child in children}) >= trials

    written = (workdir / "params.yaml").read_text()
    best = study.best_params
    xgboost = yaml.safe_load(written)["train"]["xgboost"]
    assert xgboost["max_depth"] == best["max_depth"]
    assert xgboost["learning_rate"] == pytest.approx(best["learning_rate"], rel=1e-3)
    assert [line for line in written.splitlines() if line.lstrip().startswith("#")] == comments
