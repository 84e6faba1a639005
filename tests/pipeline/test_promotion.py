"""Only a model that clears the floors and beats production earns `staging`; promote and rollback move
`production` with a record; bad data stops the pipeline before the registry."""

from __future__ import annotations

import hashlib
import json
import shutil

import mlflow
import pandas as pd
import pytest

from stages.params import Quality
from stages.register import Incumbent, decide
from tests.support.pipeline import copy_repository, run, sample_params, set_params

pytestmark = pytest.mark.slow

QUALITY = Quality(
    primary_metric="roc_auc",
    promotion_margin=0.0,
    metrics={
        "roc_auc": {"direction": "higher", "floor": 0.9},
        "accuracy": {"floor": 0.8},
        "log_loss": {"direction": "lower", "floor": 0.35},
    },
)
GOOD = {"roc_auc": 0.93, "accuracy": 0.86, "log_loss": 0.3}


def test_decide_needs_every_floor_and_a_win_over_every_incumbent():
    assert decide(GOOD, QUALITY, []).staging
    assert decide(GOOD, QUALITY, [Incumbent("production", "1", 0.92)]).staging
    tie = decide(GOOD, QUALITY, [Incumbent("production", "1", 0.93)])
    assert not tie.staging, "a tie is not a win"
    assert "FAIL does not beat production v1 on roc_auc: 0.930000 vs 0.930000 (margin 0.0)" in tie.reasons
    within = decide(
        GOOD, QUALITY.model_copy(update={"promotion_margin": 0.02}), [Incumbent("production", "1", 0.92)]
    )
    assert not within.staging, "within the margin"
    better_staging = [Incumbent("production", "1", 0.90), Incumbent("staging", "3", 0.94)]
    assert not decide(GOOD, QUALITY, better_staging).staging, "a worse model must not displace staging"


def test_floors_follow_each_metric_direction_and_missing_metrics_fail():
    below = decide({**GOOD, "accuracy": 0.79}, QUALITY, [])
    assert not below.staging and "FAIL floor accuracy: 0.790000 < 0.8" in below.reasons
    too_uncertain = decide({**GOOD, "log_loss": 0.4}, QUALITY, [])
    assert not too_uncertain.staging and "FAIL floor log_loss: 0.400000 > 0.35" in too_uncertain.reasons
    missing = decide({"roc_auc": 0.95, "log_loss": 0.3}, QUALITY, [])
    assert "FAIL floor accuracy: metric missing" in missing.reasons


def test_an_incumbent_that_cannot_be_scored_blocks_staging():
    unscorable = decide(GOOD, QUALITY, [Incumbent("production", "1", None, "KeyError: 'age'")])
    assert not unscorable.staging
    assert any("production v1 cannot be scored" in reason for reason in unscorable.reasons)


@pytest.fixture
def registry_copy(trained_pipeline, tmp_path):
    """A new repo copy logging to a copy of the trained pipeline's store, whose v1 is production."""
    shutil.copy(trained_pipeline.tracking_uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    workdir = copy_repository(tmp_path / "repo")
    set_params(workdir, sample_params(), commit=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield workdir, uri, mlflow.MlflowClient()
    mlflow.set_tracking_uri(previous)


SERVED, CANDIDATES = "adult-income", "adult-income-candidates"


def aliases(client, model: str = SERVED) -> dict[str, str]:
    # Versions are ints from SQLite and strings over REST; compare as strings.
    return {alias: str(version) for alias, version in client.get_registered_model(model).aliases.items()}


def test_a_worse_model_is_registered_but_never_staged(registry_copy):
    workdir, uri, client = registry_copy
    set_params(workdir, {"train.candidates": ["xgboost"], "train.xgboost.n_estimators": 2,
                         "train.xgboost.max_depth": 1,
                         "quality.metrics.roc_auc.floor": 0.5, "quality.metrics.pr_auc.floor": None,
                         "quality.metrics.accuracy.floor": None})  # fmt: skip
    run(workdir, uri, "dvc", "repro")

    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{CANDIDATES}'")}
    assert sorted(versions, key=int) == ["1", "2"]
    assert versions["2"].tags["status"] == "rejected"
    assert "FAIL does not beat production v1 on roc_auc" in versions["2"].tags["decision"]
    assert aliases(client) == {"production": "1"} and aliases(client, CANDIDATES) == {"development": "2"}
    registry = json.loads((workdir / "data" / "reports" / "registry.json").read_text())
    assert registry["staging"] is False
    assert [(rival["alias"], rival["version"]) for rival in registry["compared_with"]] == [
        ("production", "1")
    ]

    refused = run(workdir, uri, "python", "-m", "stages.registry", "promote", check=False)
    assert refused.returncode != 0 and "has no 'staging' version" in refused.stderr
    assert aliases(client)["production"] == "1"


def test_promote_and_rollback_move_production_with_a_record(registry_copy):
    workdir, uri, client = registry_copy
    run(workdir, uri, "dvc", "repro")  # the same model again: it ties production, so it is not staged
    assert "staging" not in aliases(client, CANDIDATES)
    client.set_registered_model_alias(CANDIDATES, "staging", "2")  # as if it had won

    promoted = run(workdir, uri, "python", "-m", "stages.registry", "promote")
    assert "production v1 -> v2, a copy of adult-income-candidates v2" in promoted.stdout
    assert aliases(client) == {"production": "2"} and aliases(client, CANDIDATES) == {"development": "2"}
    new, old = client.get_model_version(SERVED, "2"), client.get_model_version(SERVED, "1")
    assert new.tags["replaced_version"] == "1" and new.tags["promoted_by"]
    assert new.tags["candidate_version"] == "2" and new.source == f"models:/{CANDIDATES}/2"
    assert mlflow.sklearn.load_model(f"models:/{SERVED}@production").predict_proba is not None
    assert old.tags["status"] == "archived" and old.tags["replaced_by"] == "2"

    rolled = run(workdir, uri, "python", "-m", "stages.registry", "rollback")
    assert "production v2 -> v1" in rolled.stdout
    assert aliases(client)["production"] == "1"
    assert client.get_model_version(SERVED, "2").tags["status"] == "rolled_back"


def test_bad_data_stops_before_training_and_leaves_the_registry_alone(registry_copy):
    workdir, uri, client = registry_copy
    frame = pd.DataFrame({
        "age": [25, 140, 38, 52] * 300, "workclass": ["Private"] * 1200, "education": ["Bachelors"] * 1200,
        "education-num": [13] * 1200, "marital-status": ["Never-married"] * 1200,
        "occupation": ["Sales"] * 1200, "relationship": ["Own-child"] * 1200, "race": ["White"] * 1200,
        "gender": ["Female", "Male"] * 600, "capital-gain": [0] * 1200, "capital-loss": [0] * 1200,
        "hours-per-week": [40] * 1200, "native-country": ["Canada"] * 1200,
        "income": ["<=50K", "<=50K", ">50K", "<=50K"] * 300,
    })  # fmt: skip
    frame["age"] = frame["age"] + (frame.index % 7)  # distinct rows, so only the range check can fail
    source = workdir / "data" / "raw" / "bad.csv"
    frame.to_csv(source, index=False)
    set_params(workdir, {"data.source": "data/raw/bad.csv", "data.read.index_column": None, "data.sample_rows": None,
                         "data.sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                         "validate.min_rows": {"train": 100, "val": 10, "test": 10}})  # fmt: skip
    runs_before = len(mlflow.search_runs(search_all_experiments=True))

    result = run(workdir, uri, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "in_range(17, 90) on column 'age'" in result.stderr + result.stdout
    assert "Running stage 'train'" not in result.stdout
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before
    assert [str(v.version) for v in client.search_model_versions(f"name = '{CANDIDATES}'")] == ["1"]
    assert aliases(client) == {"production": "1"} and aliases(client, CANDIDATES) == {"development": "1"}
