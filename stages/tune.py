"""`make tune [N_TRIALS=50] [JOBS=1]`: an Optuna study per candidate family, then the best parameters
written back into params.yaml. Not a stage of `dvc repro`: it is slow, and adopting its result is a
decision, which the user then takes with `dvc repro` or `dvc exp run` and a pull request.

- Each trial is scored by `tune.folds`-fold stratified cross-validation over the training split, with
  XGBoost's early stopping carved out of each fold's training part. The validation split stays for
  `train` to select with, and the test split never takes part: a tuned model's test figures remain
  an honest estimate. (One validation split of ~4,900 rows gives ROC AUC a standard error of about
  0.004, as large as what tuning gains; five folds over ~22,000 rows average that noise away.)
- TPE, seeded by `tune.seed`. With JOBS > 1 trials run in parallel threads, and the study is no longer
  reproducible even when seeded: which trial sees which sampled point depends on timing.
- The study lives in OPTUNA_STORAGE (default sqlite:///optuna.db at the repository root, ignored by
  git; any SQLAlchemy URL): an interrupted `make tune` resumes, counting the trials already done.
- Each trial is a nested MLflow run under one parent run named after the study.
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from stages.classification import classification_metrics
from stages.errors import StageError, run
from stages.features import labels, model_inputs
from stages.modelling import fit
from stages.params import Family, Params, SearchDimension, load_params
from stages.params_writer import update_params
from stages.tracking import configure
from stages.workspace import project_root, run_name, workspace

SIGNIFICANT = 4  # digits kept of a tuned float: params.yaml stays readable, the optimum does not move


def suggest(trial: optuna.Trial, name: str, dimension: SearchDimension) -> float | int:
    if dimension.type == "int":
        return trial.suggest_int(name, int(dimension.low), int(dimension.high), log=dimension.log)
    return trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)


def cross_validated(
    params: Params, family: Family, settings: dict[str, Any], x: pd.DataFrame, y: np.ndarray
) -> float:
    """The selection metric, averaged over stratified folds of the training split."""
    tune, train = params.tune, params.train
    folds = StratifiedKFold(tune.folds, shuffle=True, random_state=tune.seed)
    scores = []
    for fold_train, fold_test in folds.split(x, y):
        fitted = fit(
            family,
            params.features,
            settings,
            train.early_stopping,
            train.seed,
            x.iloc[fold_train],
            y[fold_train],
        )
        probability = fitted.pipeline.predict_proba(x.iloc[fold_test])[:, 1]
        metrics = classification_metrics(y[fold_test], probability, params.features.decision_threshold)
        scores.append(metrics[train.selection_metric])
    return float(np.mean(scores))


def study_name(params: Params, family: Family) -> str:
    return f"{params.mlflow.experiment}-{family}"


def tune_family(
    params: Params, family: Family, n_trials: int, jobs: int, storage: str, x: pd.DataFrame, y: np.ndarray
) -> dict[str, Any]:
    space = params.tune.space.get(family)
    if not space:
        raise StageError(f"tune.space has no search space for {family}, a candidate in train.candidates")
    name = study_name(params, family)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=params.tune.seed),
    )
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # left by an interrupted run
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    remaining = max(0, n_trials - done)
    print(f"tune: {name}: {done} trials done in {storage}, {remaining} to run ({jobs} at a time)")
    base = params.train.settings(family)
    client = mlflow.MlflowClient()
    lock = threading.Lock()
    with mlflow.start_run(run_name=f"tune/{name}/{run_name()}", tags={"optuna_study": name}) as parent:

        def objective(trial: optuna.Trial) -> float:
            chosen = {key: suggest(trial, key, dimension) for key, dimension in space.items()}
            settings = {**base, **chosen}
            with lock:  # MLflow's client is thread-safe; the run names are numbered in trial order
                child = client.create_run(
                    parent.info.experiment_id,
                    run_name=f"{name}/trial-{trial.number}",
                    tags={"mlflow.parentRunId": parent.info.run_id, "optuna_trial": str(trial.number)},
                )
            score = cross_validated(params, family, settings, x, y)
            client.log_batch(
                child.info.run_id,
                params=[mlflow.entities.Param(key, str(value)) for key, value in chosen.items()],
                metrics=[mlflow.entities.Metric(f"cv_{params.train.selection_metric}", score, 0, 0)],
            )
            client.set_terminated(child.info.run_id)
            return score

        if remaining:
            study.optimize(
                objective, n_trials=remaining, n_jobs=jobs, show_progress_bar=True, gc_after_trial=False
            )
        best = study.best_trial
        assert best.value is not None  # a COMPLETE trial of a single-objective study has its value
        mlflow.log_params({f"best_{key}": value for key, value in best.params.items()})
        mlflow.log_metric(f"best_cv_{params.train.selection_metric}", best.value)
    print(f"tune: {name}: best cv {params.train.selection_metric}={best.value:.5f} with {best.params}")
    return {key: _readable(value) for key, value in best.params.items()}


def _readable(value: Any) -> Any:
    return float(f"{value:.{SIGNIFICANT}g}") if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-trials", type=int, help="trials per family (default: params.yaml tune.n_trials)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at a time (not reproducible above 1)")
    args = parser.parse_args(argv)
    params = load_params()
    storage = os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{project_root() / 'optuna.db'}"
    n_trials = args.n_trials or params.tune.n_trials
    train = pd.read_parquet(workspace() / params.paths.prepared / "train.parquet")
    x, y = model_inputs(train, params.features), labels(train, params.features)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it all
    configure()
    changes: dict[str, Any] = {}
    for family in params.train.candidates:
        best = tune_family(params, family, n_trials, args.jobs, storage, x, y)
        changes.update({f"train.{family}.{key}": value for key, value in best.items()})
    update_params(changes, workspace() / "params.yaml")
    print(
        f"tune: wrote {len(changes)} parameters into params.yaml; run `dvc repro` (or `dvc exp run`) to train with them"
    )


if __name__ == "__main__":
    run(main, "tune")
