"""params.yaml, read once per stage, and the repository root (also from inside DVC's temp copies)."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

_EXP_TEMP_DIR = (".dvc", "tmp", "exps")


def workspace() -> Path:
    """Where this stage runs: the repository, or a temp copy of it for a queued experiment."""
    return Path.cwd().resolve()


def project_root() -> Path:
    """The user's repository. Queued experiments run in <repo>/.dvc/tmp/exps/<tmp>/, which DVC deletes
    afterwards, so anything that must outlive the run (the MLflow database) is anchored here instead."""
    parts = workspace().parts
    for index in range(len(parts) - len(_EXP_TEMP_DIR)):
        if parts[index : index + len(_EXP_TEMP_DIR)] == _EXP_TEMP_DIR:
            return Path(*parts[:index])
    return workspace()


@cache
def load_params() -> dict[str, Any]:
    with open(workspace() / "params.yaml") as handle:
        return yaml.safe_load(handle)


def path(name: str) -> Path:
    """A path from params.yaml `paths`, with its folder created: every stage writes where it reads it."""
    resolved = workspace() / load_params()["paths"][name]
    resolved.parent.mkdir(parents=True, exist_ok=True)
    return resolved


def git_sha() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workspace(), capture_output=True, text=True, check=True
        )
        return result.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("DVC_EXP_BASELINE_REV", "unknown")


def git_dirty() -> bool:
    """Whether the code that ran differs from the commit that `git_sha` names."""
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=workspace(),
            capture_output=True,
            text=True,
            check=True,
        )
        return bool(result.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return False


def experiment_name() -> str:
    """DVC sets DVC_EXP_NAME inside `dvc exp run`; a plain `dvc repro` has none."""
    return os.environ.get("DVC_EXP_NAME", "")
