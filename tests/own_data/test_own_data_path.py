"""A new user's path on data other than Adult: `make contract`, `dvc repro`, promote, serve. German credit
(space-separated, no header, labels 1/2) and scikit-learn's breast-cancer data (all numeric, 0/1
labels, 63% positive), one after the other into one registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from api.settings import Settings
from stages.features import model_inputs
from stages.params import Params, parse, read_yaml
from tests.api.support import download_version, json_rows, load_pipeline, serving
from tests.support.pipeline import copy_repository, run
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.slow

GERMAN = REPO_ROOT / "tests" / "own_data" / "german.data"


@dataclass(frozen=True)
class OwnData:
    workdir: Path
    uri: str
    name: str
    file: Path
    contract_output: str
    params: Params


def own_repository(
    workdir: Path, file_name: str, write: Callable[[Path], object], uri: str, **contract: str
) -> OwnData:
    """A clone whose data is a file of the user's: the two commands, then promote (as `make run` does)."""
    copy_repository(workdir)
    (workdir / ".venv").symlink_to(REPO_ROOT / ".venv")  # make finds its venv up to date
    file = workdir / "data" / "raw" / file_name
    write(file)
    arguments = [f"{key.upper()}={value}" for key, value in contract.items()]
    made = run(
        workdir, uri, "make", "--no-print-directory", "contract", f"SOURCE=data/raw/{file_name}", *arguments
    )
    subprocess.run(
        ["git", "add", "-A"], cwd=workdir, check=True
    )  # the raw file is tracked, as the README says
    subprocess.run(["git", "commit", "-q", "-m", "my data"], cwd=workdir, check=True)
    run(workdir, uri, "dvc", "repro")
    run(workdir, uri, "python", "-m", "stages.registry", "promote", "--first")
    params = parse(read_yaml((workdir / "params.yaml").read_text(), "params.yaml"))
    return OwnData(workdir, uri, params.mlflow.model_name, file, made.stdout, params)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('own-data') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def german(store, tmp_path_factory) -> OwnData:
    return own_repository(
        tmp_path_factory.mktemp("german") / "repo", "german.data", lambda path: shutil.copy(GERMAN, path),
        store, target="column_21", positive="2", name="german-credit",
    )  # fmt: skip


@pytest.fixture(scope="module")
def breast_cancer(store, german, tmp_path_factory) -> tuple[OwnData, dict[str, str]]:
    """Trained after German credit, into the same store; also returns German's registry as it was."""
    from sklearn.datasets import load_breast_cancer

    def write(path: Path) -> None:
        data = load_breast_cancer(as_frame=True)
        data.frame.to_csv(path, index=False)

    before = registry_state(store, german.name)
    repository = own_repository(
        tmp_path_factory.mktemp("breast") / "repo", "breast_cancer.csv", write, store, target="target",
        positive="1",
    )  # fmt: skip
    return repository, before


def registry_state(uri: str, name: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = client.get_registered_model(name)
    versions = {
        str(v.version): v.tags.get("status", "") for v in client.search_model_versions(f"name = '{name}'")
    }
    return {**{f"alias:{alias}": str(version) for alias, version in model.aliases.items()}, **versions}


def served_answers(data: OwnData, rows: list[dict]) -> tuple[dict, list[dict]]:
    settings = Settings(mlflow_tracking_uri=data.uri, model_name=data.name, model_alias="production")
    with serving(settings) as client:
        card = client.get("/model").json()
        answers = client.post("/predict/batch", json={"records": rows})
        assert answers.status_code == 200, answers.text
        single = client.post("/predict", json=rows[0]).json()
    return card, [single, *answers.json()["predictions"]]


def test_contract_explains_what_it_decided(german):
    assert "delimiter ' ' (sniffed" in german.contract_output and "header: no" in german.contract_output
    assert "column_21  target       labels [1, 2], positive 2" in german.contract_output
    assert german.params.features.labels == [1, 2] and german.params.features.positive_label == 2
    assert german.params.data.read.header is False and german.params.data.source == "data/raw/german.data"


@pytest.mark.parametrize("which", ["german", "breast_cancer"])
def test_the_served_model_is_the_new_one_and_answers_like_the_logged_model(which, request):
    data = request.getfixturevalue(which)
    data = data[0] if isinstance(data, tuple) else data
    metrics = json.loads((data.workdir / "data" / "metrics.json").read_text())
    test = pd.read_parquet(data.workdir / "data" / "prepared" / "test.parquet")
    inputs = model_inputs(test, data.params.features)
    rows = json_rows(inputs.head(50))
    card, answers = served_answers(data, rows)
    assert card["name"] == data.name and card["alias"] == "production"
    assert card["predictor"].startswith("fast-"), card
    client = MlflowClient(tracking_uri=data.uri, registry_uri=data.uri)
    version = client.get_model_version_by_alias(data.name, "production")
    logged = load_pipeline(str(download_version(data.uri, data.name, str(version.version))))
    expected = logged.predict_proba(inputs.head(50))[:, 1]
    got = np.array([answer["probability"] for answer in answers[1:]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    labels = data.params.features.labels
    assert {type(answer["label"]) for answer in answers} == {type(labels[0])}, "labels keep their JSON type"
    assert {answer["label"] for answer in answers} <= set(labels)
    if which == "german":
        assert 0.70 < metrics["roc_auc"] < 0.90, metrics  # about 0.78 on this split


def test_a_second_repro_is_a_no_op_and_an_edited_file_re_runs_prepare(german):
    again = run(german.workdir, german.uri, "dvc", "repro")
    assert "Data and pipelines are up to date" in again.stdout, again.stdout
    lines = german.file.read_text().splitlines(keepends=True)
    german.file.write_text("".join(lines[:-1]))  # the user drops a row, in place
    try:
        edited = run(german.workdir, german.uri, "dvc", "repro", check=False)
        assert "Running stage 'prepare'" in edited.stdout, edited.stdout
        assert edited.returncode != 0 and "params.yaml data.sha256 expects" in edited.stderr
    finally:
        german.file.write_text("".join(lines))
    # The file as it was: prepare's outputs come back from DVC's cache, and nothing runs again.
    restored = run(german.workdir, german.uri, "dvc", "repro").stdout
    assert "Running stage" not in restored, restored


def test_the_other_data_set_s_registry_is_untouched(breast_cancer, german):
    repository, before = breast_cancer
    assert repository.name == "breast_cancer" != german.name
    assert registry_state(german.uri, german.name) == before


def test_each_data_set_stages_its_candidates_under_its_own_name(breast_cancer, german):
    repository, _ = breast_cancer
    names = {data.params.mlflow.candidate_model_name for data in (german, repository)}
    assert names == {"german-credit-candidates", "breast_cancer-candidates"}
    client = MlflowClient(tracking_uri=german.uri, registry_uri=german.uri)
    for data in (german, repository):
        candidates = client.search_model_versions(f"name = '{data.params.mlflow.candidate_model_name}'")
        assert candidates, f"{data.name} registered no candidate"
        promoted = client.get_model_version_by_alias(data.name, "production")
        assert promoted.tags["candidate_model"] == data.params.mlflow.candidate_model_name
        assert promoted.tags["candidate_version"] in {str(version.version) for version in candidates}


def test_a_model_name_the_registry_lacks_is_named_on_ready(german):
    settings = Settings(mlflow_tracking_uri=german.uri, model_name="loans", model_alias="production",
                        retry_initial_seconds=0.05, retry_max_seconds=0.2)  # fmt: skip
    with serving(settings, ready=False) as client:
        reason = client.get("/ready").json()["reason"]
        for _ in range(40):
            if reason and "loans" in reason:
                break
            reason = client.get("/ready").json()["reason"]
    assert "models:/loans@production" in reason and "not found" in reason
