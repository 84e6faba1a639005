"""Run the real pipeline (`dvc repro`) on a small sample, in a temp copy of the repository."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import REPO_ROOT, subprocess_env

SAMPLE_ROWS = 4000
# A 4,000-row sample cannot reach the full-data floors; tests exercise the mechanics, not the quality.
SAMPLE_FLOORS = {"roc_auc": 0.85, "pr_auc": 0.55, "accuracy": 0.78}


@dataclass(frozen=True)
class PipelineRun:
    workdir: Path
    tracking_uri: str
    model_name: str
    test_split: Path


def copy_repository(dest: Path) -> Path:
    """The working tree as git sees it (tracked plus untracked-not-ignored files), committed into a fresh
    repository so that DVC and `dvc exp` behave as in a clone."""
    dest.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    # A repository-local identity: DVC commits experiments with it, and CI machines may have none.
    subprocess.run(["git", "config", "user.name", "fast-mlops tests"], cwd=dest, check=True)
    subprocess.run(["git", "config", "user.email", "tests@fast-mlops.invalid"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "copy for tests"], cwd=dest, check=True)
    return dest


def set_params(workdir: Path, overrides: dict[str, Any], commit: bool = False) -> None:
    """Set dotted keys in params.yaml, e.g. {"train.candidates": ["logreg"]}."""
    params_file = workdir / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    if commit:
        subprocess.run(
            ["git", "commit", "-q", "-am", f"params: {sorted(overrides)}"], cwd=workdir, check=True
        )


def sample_params() -> dict[str, Any]:
    floors = {f"quality.metrics.{metric}.floor": floor for metric, floor in SAMPLE_FLOORS.items()}
    # A 600-row test split has about 20 positive women: the fairness summary needs smaller groups here.
    return {"data.sample_rows": SAMPLE_ROWS, "evaluate.min_group_size": 10, **floors}


def run(
    workdir: Path, tracking_uri: str, *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run a command (e.g. "dvc", "repro") in the copy, logging to the given tracking store."""
    result = subprocess.run(
        list(args),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(MLFLOW_TRACKING_URI=tracking_uri),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def trained_and_promoted(workdir: Path, tracking_uri: str) -> PipelineRun:
    """A sample-sized repo copy with one registered version carrying `production`."""
    copy_repository(workdir)
    set_params(workdir, sample_params(), commit=True)
    run(workdir, tracking_uri, "dvc", "repro")
    run(workdir, tracking_uri, "python", "-m", "stages.registry", "promote", "--first")
    model_name = yaml.safe_load((workdir / "params.yaml").read_text())["mlflow"]["model_name"]
    return PipelineRun(workdir, tracking_uri, model_name, workdir / "data" / "prepared" / "test.parquet")
