"""Where a stage runs and what it ran from: the workspace, the repository root (also from inside DVC's
temp copies), the git commit and the DVC experiment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def output(relative: Path | str) -> Path:
    """A path of params.yaml `paths`, in the workspace, with its folder created: stages write where they
    read it."""
    resolved = workspace() / relative
    resolved.parent.mkdir(parents=True, exist_ok=True)
    return resolved


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=workspace(), capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout


def git_sha() -> str:
    sha = _git("rev-parse", "HEAD")
    return sha.strip() if sha else os.environ.get("DVC_EXP_BASELINE_REV", "unknown")


# What the pipeline itself writes (its outs, metrics, reports, dvc.lock): a difference there says the
# pipeline ran, not that the code or the params differ from the commit.
PIPELINE_WRITES = ("data", "dvc.lock")


def git_dirty() -> bool:
    """Whether the code or the params that ran differ from the commit that `git_sha` names."""
    excluded = [f":(exclude){path}" for path in PIPELINE_WRITES]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    return bool(status and status.strip())


def run_name() -> str:
    """The MLflow run name: the DVC experiment's name, else `repro-<sha>-<UTC time>`, distinct per run."""
    from datetime import UTC, datetime

    return experiment_name() or f"repro-{git_sha()[:8]}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def experiment_name() -> str:
    """DVC sets DVC_EXP_NAME inside `dvc exp run`; a plain `dvc repro` has none."""
    return os.environ.get("DVC_EXP_NAME", "")


def dvc_hash(path: Path) -> str:
    """A file's or directory's hash exactly as DVC writes it into dvc.lock (`<md5>.dir` for a directory):
    the one definition of a data version, computed with DVC's own code."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    scratch = HashFileDB(MemoryFileSystem(), "/")  # nothing is stored: dry_run only computes the hash
    _, _, built = build(scratch, str(path), LocalFileSystem(), "md5", dry_run=True)
    return str(built.hash_info.value)
