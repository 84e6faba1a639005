"""Registry operations survive a `kill -9` at any point and two writers at once: real processes, real
SIGKILLs (at named points, then at random moments), and real concurrent registers."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from stages.registry.faults import CRASH_AT
from tests.support.pipeline import run, set_params
from tests.support.processes import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow

MODEL = "adult-income"
CANDIDATES = "adult-income-candidates"


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    """A SQLite registry with candidates 1..3 of the project's model, staging on candidate 2, and the
    served model's v1, a copy of candidate 1, in production."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(CANDIDATES)
    for _ in range(3):
        client.create_model_version(CANDIDATES, source=(folder / "artifact").as_uri())
    client.copy_model_version(f"models:/{CANDIDATES}/1", MODEL)
    client.set_registered_model_alias(MODEL, "production", "1")
    client.set_registered_model_alias(CANDIDATES, "staging", "2")
    return folder / "registry.db"


@pytest.fixture
def store(store_template, tmp_path) -> str:
    shutil.copy(store_template, tmp_path / "registry.db")
    return f"sqlite:///{tmp_path / 'registry.db'}"


def registry(uri: str, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    env.pop(CRASH_AT, None)
    if crash_at:
        env[CRASH_AT] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "stages.registry", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def state(uri: str, model: str = MODEL) -> tuple[dict[str, str], dict[str, str]]:
    """(alias -> version, version -> status tag), of the served model unless told otherwise."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    aliases = {alias: str(version) for alias, version in client.get_registered_model(model).aliases.items()}
    statuses = {
        str(v.version): v.tags.get("status", "") for v in client.search_model_versions(f"name = '{model}'")
    }
    return aliases, statuses


def test_a_promote_killed_after_the_alias_moved_is_completed_and_can_be_rolled_back(store):
    killed = registry(store, "promote", crash_at="promote:after-alias")
    assert killed.returncode == -9, killed.stderr
    assert state(store)[0]["production"] == "2"  # the alias moved, the tags did not follow

    rolled = registry(store, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert "completed an interrupted promote v1 -> v2" in rolled.stdout
    assert "production v2 -> v1" in rolled.stdout
    aliases, statuses = state(store)
    assert aliases["production"] == "1"
    assert statuses["1"] == "production" and statuses["2"] == "rolled_back"


def test_a_promote_killed_before_the_alias_moved_is_reversed_and_promote_goes_ahead(store):
    assert registry(store, "promote", crash_at="promote:before-alias").returncode == -9
    assert state(store)[0] == {"production": "1"} and state(store, CANDIDATES)[0] == {"staging": "2"}
    again = registry(store, "promote")
    assert again.returncode == 0, again.stderr
    assert "reversed an interrupted promote v1 -> v2" in again.stdout
    assert state(store) == ({"production": "2"}, {"1": "archived", "2": "production"})
    assert state(store, CANDIDATES) == ({}, {"1": "", "2": "promoted", "3": ""})


def test_a_promote_killed_after_the_copy_reuses_that_copy(store):
    assert registry(store, "promote", crash_at="promote:after-copy").returncode == -9
    assert state(store) == ({"production": "1"}, {"1": "", "2": ""})  # copied, nothing moved yet
    again = registry(store, "promote")
    assert again.returncode == 0, again.stderr
    assert "production v1 -> v2, a copy of adult-income-candidates v2" in again.stdout
    assert state(store) == ({"production": "2"}, {"1": "archived", "2": "production"})  # no v3


def test_a_promote_killed_between_its_tags_never_leaves_two_production_versions(store):
    assert registry(store, "promote", crash_at="promote:between-tags").returncode == -9
    first = registry(store, "promote", "--first")
    assert first.returncode == 0 and "completed an interrupted promote" in first.stdout
    aliases, statuses = state(store)
    assert [version for version, status in statuses.items() if status == "production"] == [
        aliases["production"]
    ]


def test_random_kills_of_promote_and_rollback_always_leave_a_consistent_registry(store):
    """SIGKILLs at random moments of a promote or a rollback: afterwards (and after the next operation,
    which recovers), exactly one version is `production`, the one the alias names."""
    rng = random.Random(7)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    env = subprocess_env(MLFLOW_TRACKING_URI=store)
    for attempt in range(4):
        command = "promote" if attempt % 2 == 0 else "rollback"
        if command == "promote" and client.get_registered_model(CANDIDATES).aliases.get("staging") is None:
            production = client.get_model_version_by_alias(MODEL, "production").source
            staged = "3" if production != f"models:/{CANDIDATES}/3" else "2"
            client.set_registered_model_alias(CANDIDATES, "staging", staged)
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.registry", command], cwd=REPO_ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(2.0, 4.5))  # the import takes about 2-3 s; the writes come after
        process.kill()
        process.wait()
        recovered = registry(store, "promote", "--first")  # any operation finishes or drops an intent
        assert recovered.returncode == 0, recovered.stderr
        aliases, statuses = state(store)
        producing = [version for version, status in statuses.items() if status == "production"]
        assert producing in ([], [aliases["production"]]), (attempt, aliases, statuses)
        assert "promotion_intent" not in client.get_registered_model(MODEL).tags
        sources = [v.source for v in client.search_model_versions(f"name = '{MODEL}'")]
        assert len(sources) == len(set(sources)), ("a candidate copied twice", attempt, sources)


@pytest.fixture(scope="module")
def rival_template(trained_pipeline, tmp_path_factory):
    """Two workspaces of the session's pipeline sharing one store with no registered model yet: `good`
    holds the session's model, `worse` a far smaller one trained on the same split. Built once."""
    folder = tmp_path_factory.mktemp("rivals")
    shutil.copy(trained_pipeline.tracking_uri.removeprefix("sqlite:///"), folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for model in (MODEL, CANDIDATES):  # the runs stay
        MlflowClient(tracking_uri=uri, registry_uri=uri).delete_registered_model(model)
    floors = {"quality.metrics.roc_auc.floor": 0.5, "quality.metrics.pr_auc.floor": None,
              "quality.metrics.accuracy.floor": None}  # fmt: skip
    for name in ("good", "worse"):
        shutil.copytree(trained_pipeline.workdir, folder / name, symlinks=True)
        set_params(folder / name, floors)
    set_params(folder / "worse", {"train.candidates": ["xgboost"], "train.xgboost.n_estimators": 3,
                                  "train.xgboost.max_depth": 1})  # fmt: skip
    run(folder / "worse", uri, "dvc", "repro", "evaluate")
    return folder


@pytest.fixture
def rival_workspaces(rival_template, tmp_path):
    """A private copy of the template: its store and both workspaces."""
    shutil.copytree(rival_template, tmp_path / "rivals", symlinks=True)
    folder = tmp_path / "rivals"
    return f"sqlite:///{folder / 'mlflow.db'}", folder / "good", folder / "worse"


def test_two_registers_at_once_leave_staging_with_the_better_model(rival_workspaces):
    uri, good, worse = rival_workspaces
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    command = [sys.executable, "-m", "stages.register"]
    first = subprocess.Popen(
        command, cwd=good, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(0.3)  # the worse one starts second, so that without a lock it would write last
    second = subprocess.Popen(
        command, cwd=worse, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    reports = {name: json.loads((folder / "data" / "reports" / "registry.json").read_text())
               for name, folder in (("good", good), ("worse", worse))}  # fmt: skip
    aliases, _ = state(uri, CANDIDATES)
    assert aliases.get("staging") == reports["good"]["version"], (aliases, outputs)
    # Serialised: whichever went second compared itself with the first's staging version.
    seconds = [r for r in reports.values() if any(c["alias"] == "staging" for c in r["compared_with"])]
    assert len(seconds) == 1, reports
    assert yaml.safe_load((worse / "params.yaml").read_text())["train"]["xgboost"]["n_estimators"] == 3


def test_register_run_again_after_a_kill_finishes_the_version_instead_of_adding_one(rival_workspaces):
    uri, good, _ = rival_workspaces
    env = subprocess_env(MLFLOW_TRACKING_URI=uri, **{CRASH_AT: "register:after-version"})
    killed = subprocess.run([sys.executable, "-m", "stages.register"], cwd=good, env=env, capture_output=True)
    assert killed.returncode == -9
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {str(v.version) for v in client.search_model_versions(f"name = '{CANDIDATES}'")}
    env.pop(CRASH_AT)
    again = subprocess.run(
        [sys.executable, "-m", "stages.register"], cwd=good, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was already registered from this training run" in again.stdout
    assert {str(v.version) for v in client.search_model_versions(f"name = '{CANDIDATES}'")} == versions
    newest = max(versions, key=int)
    assert state(uri, CANDIDATES)[0] == {"development": newest, "staging": newest}


def test_register_is_never_restored_from_dvc_s_run_cache():
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["register"]
    (registered,) = stage["outs"]
    assert isinstance(registered, dict)
    options = next(iter(registered.values()))
    # Never cached, hence never restored (nor pushed: a pulled clone registers its own version).
    assert options["cache"] is False and options.get("push") is False


def test_the_actor_of_a_move_is_github_s_in_ci(store, monkeypatch):
    env = subprocess_env(MLFLOW_TRACKING_URI=store, GITHUB_ACTOR="octocat")
    promoted = subprocess.run([sys.executable, "-m", "stages.registry", "promote"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True)  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.get_model_version(MODEL, "2").tags["promoted_by"] == "octocat"
