"""`make bench-pipeline`: wall time of a full `dvc repro` on the default data and of a no-op one, in a
temp copy of the repository with its own MLflow store. Prints figures; asserts nothing about time."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.support.pipeline import copy_repository, run

TARGET_FULL_SECONDS = 90


def timed(workdir: Path, uri: str) -> float:
    start = time.perf_counter()
    run(workdir, uri, "dvc", "repro")
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        workdir = copy_repository(Path(scratch) / "repo")
        uri = f"sqlite:///{scratch}/mlflow.db"
        full = timed(workdir, uri)
        noop = timed(workdir, uri)
    print(
        f"full dvc repro : {full:6.1f} s  (target < {TARGET_FULL_SECONDS} s: {full / TARGET_FULL_SECONDS:.2f}x)"
    )
    print(f"no-op dvc repro: {noop:6.1f} s  (target < 2 s)")


if __name__ == "__main__":
    main()
