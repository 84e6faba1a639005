"""`make retrain`: labelled feedback from the logs becomes a new DVC-tracked data version and a registered,
lineage-tagged model; the test split keeps its rows; production never moves; a bad batch stops first."""

from __future__ import annotations

import gzip
import json
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from stages.errors import StageError
from stages.params import parse, read_yaml
from stages.prepare import read_raw, resolve_source, sha256_of
from stages.retrain import LINEAGE_COLUMNS, Batch, Logs, decide, grown_file, join, read_logs
from tests.retraining.synthetic import START, write_logs
from tests.support.pipeline import copy_repository, run, sample_params, set_params
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.slow

BASE_ROWS = 3000  # the sample the first model is trained on
NEW_ROWS = 300  # the feedback: Adult rows the sample does not hold, with their true labels
MIN_ROWS = 100


@dataclass(frozen=True)
class Copy:
    workdir: Path
    tracking_uri: str

    def params(self):
        return parse(read_yaml((self.workdir / "params.yaml").read_text(), "params.yaml"))

    def retrain(self, logs: Path, check: bool = True) -> subprocess.CompletedProcess:
        return run(self.workdir, self.tracking_uri, "env", f"INFERENCE_LOG_DIR={logs}", "python", "-m",
                   "stages.retrain", check=check)  # fmt: skip


def adult_records() -> list[str]:
    """The Adult file's header and records, as written (the raw form the new rows must match)."""
    params = parse(read_yaml((REPO_ROOT / "params.yaml").read_text(), "params.yaml"))
    source = resolve_source(params.data.source, params.paths.raw)
    return gzip.decompress(source.read_bytes()).decode().splitlines(keepends=True)


def fresh_copy(root: Path) -> Copy:
    """The repository on a small raw file of its own (a retrain appends to a file under data/raw)."""
    workdir = copy_repository(root / "repo")
    raw = workdir / "data" / "raw" / "adult-sample.csv"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("".join(adult_records()[: BASE_ROWS + 1]))
    overrides = {key: value for key, value in sample_params().items() if key != "data.sample_rows"}
    overrides |= {
        "data.source": "data/raw/adult-sample.csv",
        "data.sha256": sha256_of(raw),
        "retrain.min_rows": MIN_ROWS,
        # The mechanics, not the model: one fast family and fewer resamples keep two repros short.
        "train.candidates": ["logreg"],
        "evaluate.bootstrap_resamples": 100,
    }
    set_params(workdir, overrides, commit=False)
    subprocess.run(["git", "add", "-A"], cwd=workdir, check=True)
    subprocess.run(["git", "commit", "-qm", "a small raw file"], cwd=workdir, check=True)
    return Copy(workdir, f"sqlite:///{root / 'mlflow.db'}")


def feedback_rows(start: int = BASE_ROWS, count: int = NEW_ROWS) -> pd.DataFrame:
    """Adult rows the sample does not hold, as prepare reads them (the features the service logged)."""
    full = parse(read_yaml((REPO_ROOT / "params.yaml").read_text(), "params.yaml"))
    rows = read_raw(resolve_source(full.data.source, full.paths.raw), full.data.read)
    return rows.iloc[start : start + count].reset_index(drop=True)


def split_rows(workdir: Path, name: str) -> set[tuple]:
    frame = pd.read_parquet(workdir / "data" / "prepared" / f"{name}.parquet")
    return set(frame.astype(str).itertuples(index=False, name=None))


@dataclass(frozen=True)
class Retrained:
    copy: Copy
    before: dict  # params.yaml's data block, the test split and production, before the retrain
    result: subprocess.CompletedProcess
    feedback: pd.DataFrame


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> Retrained:
    root = tmp_path_factory.mktemp("retrain")
    copy = fresh_copy(root)
    run(copy.workdir, copy.tracking_uri, "dvc", "repro")
    run(copy.workdir, copy.tracking_uri, "python", "-m", "stages.registry", "promote", "--first")
    params = copy.params()
    mlflow.set_tracking_uri(copy.tracking_uri)
    production = mlflow.MlflowClient().get_model_version_by_alias(params.mlflow.model_name, "production")
    before = {
        "data": params.data.model_dump(),
        "test": split_rows(copy.workdir, "test"),
        "production": production.version,
    }
    rows = feedback_rows()
    write_logs(root / "inference", rows, params)
    result = copy.retrain(root / "inference")
    return Retrained(copy, before, result, rows)


def test_the_new_rows_are_a_new_dvc_tracked_data_version_in_the_raw_form(retrained):
    workdir, params = retrained.copy.workdir, retrained.copy.params()
    source = workdir / params.data.source
    assert params.data.source != retrained.before["data"]["source"]
    assert source.name.startswith("adult-sample-") and source.name.endswith(".csv")
    assert sha256_of(source) == params.data.sha256 and params.data.sha256[:12] in source.name
    pointer = yaml.safe_load(source.with_name(source.name + ".dvc").read_text())
    assert pointer["outs"][0]["path"] == source.name
    assert f"/{source.name}" in (source.parent / ".gitignore").read_text().splitlines()
    status = run(workdir, retrained.copy.tracking_uri, "dvc", "status", "--json")
    assert json.loads(status.stdout) == {}  # the pointer, the lock and the workspace agree
    # The original records come first, untouched; then one record per new row, in the file's form.
    records = source.read_text().splitlines(keepends=True)
    original = adult_records()[: BASE_ROWS + 1]
    assert records[0].rstrip("\n") == original[0].rstrip("\n") + "," + ",".join(LINEAGE_COLUMNS)
    assert [line.rsplit(",", 3)[0] + "\n" for line in records[1 : BASE_ROWS + 1]] == original[1:]
    assert len(records) == BASE_ROWS + 1 + NEW_ROWS
    assert set(LINEAGE_COLUMNS) <= set(params.data.drop_columns)
    grown = read_raw(source, params.data.read)
    assert len(grown) == BASE_ROWS + NEW_ROWS
    new = grown.iloc[BASE_ROWS:].reset_index(drop=True)
    pd.testing.assert_frame_equal(new[retrained.feedback.columns], retrained.feedback, check_dtype=False)
    report = json.loads((workdir / "data" / "reports" / "retrain.json").read_text())
    positive = int((retrained.feedback["income"] == ">50K").sum())
    assert report["rows_added"] == NEW_ROWS and report["positive"] == positive
    batch = json.loads((workdir / "data" / "reports" / "retrain-batch.json").read_text())
    assert batch["parent"]["sha256"] == retrained.before["data"]["sha256"]
    assert batch["scored"]["first"] <= batch["scored"]["last"]


def test_the_rows_that_were_in_the_test_split_stay_there(retrained):
    after = split_rows(retrained.copy.workdir, "test")
    assert retrained.before["test"] <= after
    assert len(after) > len(retrained.before["test"])  # some new rows joined it, by the same rule


def test_the_registry_has_a_new_version_with_lineage_and_production_did_not_move(retrained):
    params = retrained.copy.params()
    mlflow.set_tracking_uri(retrained.copy.tracking_uri)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{params.mlflow.candidate_model_name}'")
    assert len(versions) == 2
    newest = max(versions, key=lambda version: int(version.version))
    assert newest.tags["retrain.parent_data_sha256"] == retrained.before["data"]["sha256"]
    assert newest.tags["retrain.data_sha256"] == params.data.sha256
    assert newest.tags["retrain.rows_added"] == str(NEW_ROWS)
    production = client.get_model_version_by_alias(params.mlflow.model_name, "production")
    assert production.version == retrained.before["production"]
    assert "production stays v1" in retrained.result.stdout


def test_production_is_scored_on_the_new_test_split_for_the_reviewer(retrained):
    copy = retrained.copy
    scored = json.loads(
        run(copy.workdir, copy.tracking_uri, "python", "-m", "stages.retrain", "score-production").stdout
    )
    decision = json.loads((copy.workdir / "data" / "reports" / "registry.json").read_text())
    production = next(rival for rival in decision["compared_with"] if rival["alias"] == "production")
    metrics = json.loads((copy.workdir / "data" / "metrics.json").read_text())
    test_rows = len(pd.read_parquet(copy.workdir / "data" / "prepared" / "test.parquet"))
    assert scored == {
        "metric": "roc_auc",
        "test_rows": test_rows,
        "retrained": metrics["roc_auc"],
        "production_version": str(retrained.before["production"]),
        "production": production["score"],  # as register scored it, on the same new rows
        "error": "",
    }
    assert test_rows > len(retrained.before["test"])


def test_the_same_feedback_again_adds_nothing_and_stops(retrained, tmp_path):
    """The logs still hold last week's labels: their ids are in the data, so they are not added twice."""
    again = retrained.copy.retrain(retrained.copy.workdir.parent / "inference", check=False)
    assert again.returncode == 1
    assert f"0 new labelled rows (allowed: at least {MIN_ROWS}" in again.stderr
    assert f"{NEW_ROWS} already in the data" in again.stderr


# -------------------------------------------------------------------------------- bad batches
@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Copy:
    return fresh_copy(tmp_path_factory.mktemp("bad-feedback"))


@pytest.fixture
def params(untrained, monkeypatch):
    """The small copy's params; the checks run there (they read its data for the ids it holds)."""
    monkeypatch.chdir(untrained.workdir)
    return untrained.params()


def checked(logs: Path, params):
    return join(*read_logs(Logs(str(logs), str(logs / "feedback")), params), params)


def test_a_batch_of_one_label_is_refused_with_its_balance(params, tmp_path):
    rows = feedback_rows()
    write_logs(tmp_path, rows, params, labels=["<=50K"] * len(rows))
    with pytest.raises(StageError, match=r"0\.0% of the new rows are '>50K' \(allowed: 10% to 50%"):
        checked(tmp_path, params)


def test_feedback_for_unknown_ids_is_refused_with_how_many(params, tmp_path):
    write_logs(tmp_path, feedback_rows(), params, feedback_ids=[f"never-scored-{i}" for i in range(NEW_ROWS)])
    with pytest.raises(StageError, match=rf"{NEW_ROWS} of {NEW_ROWS} labelled ids \(100\.0%\) have no logged "
                       r"prediction \(allowed: 10\.0%"):  # fmt: skip
        checked(tmp_path, params)


def test_an_id_scored_twice_is_refused_as_ambiguous(params, tmp_path):
    rows = feedback_rows()
    ids = write_logs(tmp_path, rows, params)
    write_logs(tmp_path, rows.iloc[:5], params, ids=ids[:5], version="2")  # a client reused its ids
    with pytest.raises(StageError, match=r"request ids must be unique: 5 labelled ids name more than one"):
        checked(tmp_path, params)


def test_a_later_label_for_the_same_id_is_a_duplicate_and_the_first_wins(params, tmp_path):
    rows = feedback_rows()
    ids = write_logs(tmp_path, rows, params)
    flipped = ["<=50K" if label == ">50K" else ">50K" for label in rows["income"]]
    later = START + timedelta(days=1)
    write_logs(tmp_path, rows, params, labels=flipped, ids=ids, scored=False, labelled_at=later)
    batch = checked(tmp_path, params)
    assert len(batch.rows) == NEW_ROWS
    by_id = dict(zip(batch.rows["request_id"], batch.rows["label"], strict=True))
    assert [by_id[request_id] for request_id in ids] == rows["income"].tolist()


def test_a_bad_batch_stops_make_retrain_before_anything_is_written_or_registered(untrained, tmp_path):
    params = untrained.params()
    rows = feedback_rows(count=MIN_ROWS - 1)
    write_logs(tmp_path, rows, params)
    before = (untrained.workdir / "params.yaml").read_bytes()
    raw_files = sorted((untrained.workdir / "data" / "raw").iterdir())
    result = untrained.retrain(tmp_path, check=False)
    assert result.returncode == 1
    assert "retrain: the new rows are refused; nothing was written or registered:" in result.stderr
    assert (
        f"{MIN_ROWS - 1} new labelled rows (allowed: at least {MIN_ROWS}, retrain.min_rows" in result.stderr
    )
    assert (untrained.workdir / "params.yaml").read_bytes() == before
    assert sorted((untrained.workdir / "data" / "raw").iterdir()) == raw_files
    mlflow.set_tracking_uri(untrained.tracking_uri)
    assert mlflow.MlflowClient().search_registered_models() == []


# -------------------------------------------------------------------------------- retrain.yml's decision
@pytest.mark.parametrize(
    ("report", "by_hand", "expected"),
    [
        ({"drift": True, "quality_drop": False}, False, {"retrain": "true", "reason": "drift"}),
        ({"drift": False, "quality_drop": True}, False, {"retrain": "true", "reason": "quality_drop"}),
        ({"drift": False, "quality_drop": False}, True, {"retrain": "true", "reason": "asked for by hand"}),
        (
            {"drift": False, "quality_drop": False},
            False,
            {"retrain": "false", "reason": "no drift, no quality drop"},
        ),
    ],
)
def test_the_workflow_retrains_on_drift_a_quality_drop_or_by_hand_only(tmp_path, report, by_hand, expected):
    (tmp_path / "latest.json").write_text(json.dumps({**report, "features": {}}))
    assert decide(tmp_path / "latest.json", by_hand) == expected


def test_a_drift_report_without_its_verdict_is_an_error_not_a_silent_no(tmp_path):
    (tmp_path / "latest.json").write_text(json.dumps({"drift": "yes"}))
    with pytest.raises(StageError, match="drift, quality_drop must be true or false"):
        decide(tmp_path / "latest.json", by_hand=True)


# -------------------------------------------------------------------------------- retrain.yml's promises
def _workflow(name: str) -> dict:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / name).read_text())
    workflow["on"] = workflow.pop(True)  # PyYAML reads the key `on` as True (YAML 1.1)
    return workflow


def test_retrain_yml_runs_weekly_by_hand_and_on_a_retrain_dispatch_one_at_a_time():
    workflow = _workflow("retrain.yml")
    assert set(workflow["on"]) == {"schedule", "workflow_dispatch", "repository_dispatch"}
    (schedule,) = workflow["on"]["schedule"]
    assert schedule["cron"].split()[2:] == ["*", "*", "1"]  # weekly
    assert workflow["on"]["repository_dispatch"] == {"types": ["retrain"]}
    assert workflow["concurrency"] == {"group": "retrain", "cancel-in-progress": False}


def test_retrain_yml_has_least_privilege_and_trains_into_a_throwaway_registry():
    workflow = _workflow("retrain.yml")
    assert workflow["permissions"] == {}
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}
    text = (REPO_ROOT / ".github" / "workflows" / "retrain.yml").read_text()
    # No credential that writes the registry or moves production; the PR is not opened with GITHUB_TOKEN.
    for secret in (
        "MLFLOW_PIPELINE_",
        "MLFLOW_DEPLOYER_",
        "secrets.GITHUB_TOKEN",
        "secrets.STORAGE_ACCESS_KEY",
    ):
        assert secret not in text, secret
    steps = {step.get("name", step.get("uses")): step for step in job["steps"]}
    assert (
        "MLFLOW_TRACKING_URI" not in str(steps["make retrain"])
        and "MLFLOW_TRACKING_URI" not in text.split("jobs:")[0]
    )  # the shared registry's address stays inside the drift-report step
    assert (
        steps["Open or update the pull request retrain/<date>"]["env"]["GH_TOKEN"]
        == "${{ secrets.RETRAIN_PR_TOKEN }}"
    )


def test_retrain_yml_reports_then_retrains_pushes_and_opens_the_pr_in_that_order():
    (job,) = _workflow("retrain.yml")["jobs"].values()
    runs = [step.get("run", "") for step in job["steps"]]
    order = ["make drift-report", "stages.retrain decide", "make retrain", "make push", "gh pr create"]
    places = [next(index for index, run in enumerate(runs) if wanted in run) for wanted in order]
    assert places == sorted(places)
    for step in job["steps"][places[2] :]:
        assert "steps.decide.outputs.retrain == 'true'" in step["if"], step.get("name")


def test_retrain_yml_pins_its_actions_as_ci_yml_does():
    def pins(name: str) -> set[str]:
        return {
            step["uses"]
            for job in _workflow(name)["jobs"].values()
            for step in job["steps"]
            if "uses" in step
        }

    assert pins("retrain.yml") <= pins("ci.yml")


# -------------------------------------------------------------------------------- the raw form
def test_a_headerless_tsv_gets_its_new_rows_and_the_lineage_names_in_read_names(tmp_path):
    """Without a header the column names live in data.read.names: the lineage columns are added there."""
    raw = read_yaml((REPO_ROOT / "params.yaml").read_text(), "params.yaml")
    names = ["age", "workclass", "education", "education-num", "marital-status", "occupation", "relationship",
             "race", "gender", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income"]  # fmt: skip
    raw["data"] |= {"source": "data/raw/adult.tsv", "read": {"delimiter": "\t", "header": False, "names": names,
                    "index_column": None, "missing_markers": ["?"]}}  # fmt: skip
    params = parse(raw)
    source = tmp_path / "adult.tsv"
    source.write_text("".join(line.split(",", 1)[1].replace(",", "\t") for line in adult_records()[1:51]))
    rows = feedback_rows(count=3).assign(request_id=["a", "b", "c"], model_version="7")
    rows["scored_at"] = pd.Timestamp("2026-12-01T10:00:00Z")
    rows["workclass"] = [None, "Private", "Private"]  # a missing value is written as the first marker
    data, suffix, changes = grown_file(
        source, Batch(rows.rename(columns={"income": "label"}), 3, 0, 0), params
    )
    assert suffix == ".tsv"
    assert changes == {
        "data.read.names": [*names, *LINEAGE_COLUMNS],
        "data.drop_columns": list(LINEAGE_COLUMNS),
    }
    grown = tmp_path / "grown.tsv"
    grown.write_bytes(data)
    frame = read_raw(grown, params.data.read.model_copy(update={"names": changes["data.read.names"]}))
    assert len(frame) == 53 and frame["request_id"].tolist()[-3:] == ["a", "b", "c"]
    assert frame["age"].dtype == "int64" and pd.isna(frame["workclass"].iloc[50])
    assert data.decode().splitlines()[50].split("\t")[1] == "?"
