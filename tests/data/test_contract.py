"""The validate stage refuses bad data: non-zero exit, a readable report naming check, column and count."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.support.pipeline import SAMPLE_ROWS, copy_repository, set_params
from tests.support.processes import subprocess_env

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def clean_workspace(tmp_path_factory) -> Path:
    """A repo copy whose prepare stage has produced clean, sample-sized splits."""
    workdir = copy_repository(tmp_path_factory.mktemp("contract") / "repo")
    set_params(workdir, {"data.sample_rows": SAMPLE_ROWS})
    subprocess.run(
        [sys.executable, "-m", "stages.prepare"],
        cwd=workdir,
        check=True,
        capture_output=True,
        env=subprocess_env(),
    )
    return workdir


@pytest.fixture
def workspace(clean_workspace, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(clean_workspace, copy, ignore=shutil.ignore_patterns(".git"))
    return copy


def corrupt(workspace: Path, split: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    file = workspace / "data" / "prepared" / f"{split}.parquet"
    change(pd.read_parquet(file)).to_parquet(file, index=False)


def validate(workspace: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.validate"],
        cwd=workspace,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )


def report(workspace: Path) -> dict:
    return json.loads((workspace / "data" / "reports" / "validation.json").read_text())


def test_clean_data_passes(workspace):
    result = validate(workspace)
    assert result.returncode == 0, result.stderr
    assert report(workspace) == {"passed": True, "rows": report(workspace)["rows"], "violations": []}


def with_value(column: str, value, rows: int = 1):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame[column] = frame[column].astype(object)
        frame.loc[: rows - 1, column] = value
        return frame.astype({column: "string"}) if isinstance(value, str) else frame

    return change


@pytest.mark.parametrize(
    ("split", "change", "expected"),
    [
        pytest.param(
            "train",
            lambda f: f.drop(columns=["age"]),
            ["missing_column on column 'age'"],
            id="missing-column",
        ),
        pytest.param(
            "val",
            lambda f: f.astype({"hours_per_week": "string"}),
            ["dtype('int64')", "'hours_per_week'"],
            id="wrong-dtype",
        ),
        pytest.param(
            "test",
            lambda f: f.assign(age=f["age"].where(f.index != 3, 150)),
            ["in_range(17, 90)", "'age'", "1 failing", "e.g. 150"],
            id="out-of-range-age",
        ),
        pytest.param(
            "train",
            with_value("income", "maybe", rows=2),
            ["isin", "'income'", "2 failing", "maybe"],
            id="unknown-label",
        ),
        pytest.param(
            "val",
            with_value("workclass", "Astronaut"),
            ["isin", "'workclass'", "Astronaut"],
            id="unknown-category",
        ),
        pytest.param(
            "train",
            lambda f: f.assign(occupation=f["occupation"].where(f.index % 5 != 0, None)),
            ["missing_fraction<=0.08", "'occupation'"],
            id="too-many-missing",
        ),
        pytest.param("test", lambda f: f.iloc[:0], ["row_count>=200", "[test]"], id="empty-split"),
        pytest.param(
            "train", lambda f: f.assign(income=">50K"), ["positive_fraction_in[0.1,0.5]"], id="class-balance"
        ),
        pytest.param(
            "train",
            lambda f: f.assign(extra=1),
            ["unexpected_column on column 'extra'"],
            id="unexpected-column",
        ),
    ],
)
def test_bad_data_is_refused_with_a_readable_report(workspace, split, change, expected):
    corrupt(workspace, split, change)
    result = validate(workspace)
    assert result.returncode != 0
    assert result.stderr.startswith("validate: "), result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert any(all(part in line for part in expected) for line in failed), result.stderr
    assert any(line.startswith(f"  - [{split}]") for line in failed)
    assert report(workspace)["passed"] is False


def test_a_row_shared_between_splits_is_a_leak(workspace):
    train = pd.read_parquet(workspace / "data" / "prepared" / "train.parquet")
    corrupt(workspace, "test", lambda frame: pd.concat([frame, train.iloc[[7, 8]]], ignore_index=True))
    result = validate(workspace)
    assert result.returncode != 0
    assert "no_row_shared_between_splits on table: 2 failing" in result.stderr
    (violation,) = report(workspace)["violations"]
    assert violation["split"] == "test,train"


def test_an_empty_file_is_refused(workspace):
    (workspace / "data" / "prepared" / "val.parquet").write_bytes(b"")
    result = validate(workspace)
    assert result.returncode != 0
    assert "validate: cannot read" in result.stderr and "val.parquet" in result.stderr


def test_prepare_refuses_a_source_whose_hash_changed(workspace):
    set_params(workspace, {"data.sha256": "0" * 64})
    result = subprocess.run(
        [sys.executable, "-m", "stages.prepare"],
        cwd=workspace,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode != 0
    assert "params.yaml data.sha256 expects 0000" in result.stderr


def failed_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("  - ")]


@pytest.fixture
def with_missing_ages(workspace):
    """Missing ages turn the int64 column into floats: pandera then fails its dtype, nullability and
    missing-fraction checks at once."""
    for split in ("train", "val"):
        corrupt(workspace, split, lambda frame: frame.assign(age=frame["age"].where(frame.index % 10 != 0)))
    return workspace


def test_an_integer_column_with_missing_values_is_one_message_per_split_with_the_fix(with_missing_ages):
    lines = failed_lines(validate(with_missing_ages))
    about_age = [line for line in lines if "'age'" in line]
    assert len(about_age) == 2, lines
    for split, line in zip(("train", "val"), about_age, strict=True):
        assert line.startswith(f"  - [{split}] integer_with_missing_values on column 'age'")
        # Every tenth row: 0.1 of the split, or a little more when its size is not a multiple of 10.
        assert re.search(r"0\.1\d* observed, 0 allowed", line), line
        assert "features.numeric.age with dtype: float64 and a max_missing" in line


def test_too_many_missing_values_give_the_observed_and_the_allowed_fraction_and_the_key_to_raise(workspace):
    def every_fourth_missing(frame: pd.DataFrame) -> pd.DataFrame:
        known = frame["occupation"].fillna("Sales")
        return frame.assign(occupation=known.where(frame.index % 4 != 0, None)).iloc[:400]

    corrupt(workspace, "val", every_fourth_missing)
    (line,) = [line for line in failed_lines(validate(workspace)) if "'occupation'" in line]
    assert "[val] missing_fraction<=0.08 on column 'occupation'" in line
    assert "0.25 observed, 0.08 allowed" in line
    assert "Raise features.categorical.occupation.max_missing, or clean the data" in line


def test_a_row_count_floor_gives_the_observed_count(workspace):
    # Complete rows only: 150 of them could otherwise miss more occupations than max_missing allows.
    corrupt(workspace, "test", lambda frame: frame.dropna().iloc[:150])
    (line,) = failed_lines(validate(workspace))
    assert line.startswith("  - [test] row_count>=200 on table")
    assert "150 observed, >= 200 allowed" in line and "validate.min_rows.test" in line


def test_a_class_balance_bound_gives_the_observed_fraction(workspace):
    corrupt(workspace, "val", lambda frame: frame.assign(income=">50K"))
    (line,) = [line for line in failed_lines(validate(workspace)) if "positive_fraction" in line]
    assert line.startswith("  - [val] positive_fraction_in[0.1,0.5] on table")
    assert "1 observed, 0.1…0.5 allowed" in line


def test_an_out_of_range_value_gives_the_observed_and_the_allowed_range(workspace):
    corrupt(workspace, "test", lambda frame: frame.assign(age=frame["age"].where(frame.index != 3, 150)))
    (line,) = failed_lines(validate(workspace))
    assert "[test] in_range(17, 90) on column 'age'" in line
    assert "…150 observed, 17…90 allowed" in line and "features.numeric.age" in line
