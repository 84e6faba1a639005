"""retrain.yml's steps, less the pull request, in a scratch copy of the repository (`make retrain-dry-run`,
part of `make ci`): synthetic production logs, make drift-report, the decision, make retrain, dvc push
(to a local remote), and the files the pull request would carry. The working tree is never touched.

    python -m tests.retraining.dry_run [--rows 1000] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stages.params import parse, read_yaml
from stages.prepare import read_raw, resolve_source
from tests.retraining.synthetic import write_logs
from tests.support.pipeline import copy_repository
from tests.support.processes import REPO_ROOT, subprocess_env


def step(name: str, args: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> int:
    started = time.monotonic()
    print(f"retrain-dry-run: {name}: {' '.join(args)}", flush=True)
    code = subprocess.run(args, cwd=cwd, env=env).returncode
    print(f"retrain-dry-run: {name}: exit {code} in {time.monotonic() - started:.1f} s", flush=True)
    if check and code != 0:
        sys.exit(f"retrain-dry-run: {name} failed")
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="synthetic labelled rows in the logs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and print it")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="retrain-dry-run-"))
    try:
        repo = copy_repository(scratch / "repo")
        (repo / ".venv").symlink_to(REPO_ROOT / ".venv")
        logs = scratch / "inference"
        # A throwaway registry, as on the runner; the logs where the workflow copies production's.
        env = subprocess_env(
            MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", INFERENCE_LOG_DIR=str(logs)
        )
        env.pop("FEEDBACK_LOG_DIR", None)
        params = parse(read_yaml((repo / "params.yaml").read_text(), "params.yaml"))
        frame = read_raw(resolve_source(params.data.source, params.paths.raw), params.data.read)
        write_logs(logs, frame.sample(n=args.rows, random_state=0).reset_index(drop=True), params)
        report = repo / "data" / "reports" / "drift" / "latest.json"
        if subprocess.run(["make", "-n", "drift-report"], cwd=repo, capture_output=True).returncode == 0:
            # The report compares with the training split and reads production's version: on the runner
            # the shared registry has one; this throwaway registry gets one as `make run` makes it.
            step("dvc repro", ["dvc", "repro", "--quiet"], repo, env)
            step("a production", ["python", "-m", "stages.registry", "promote", "--first"], repo, env)
            step("make drift-report", ["make", "drift-report"], repo, env)
        else:  # issue 16's other half; until it lands the run is decided as if asked for by hand
            print("retrain-dry-run: make drift-report: no such target yet, skipped", flush=True)
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text('{"drift": false, "quality_drop": false}\n')
        # As a workflow_dispatch: a dry run retrains whatever the report says.
        step(
            "is a retrain due",
            ["python", "-m", "stages.retrain", "decide", str(report), "--by-hand"],
            repo,
            env,
        )
        step("make retrain", ["make", "retrain"], repo, env)
        remote = scratch / "remote"
        step("dvc remote", ["dvc", "remote", "add", "--local", "dry-run", str(remote)], repo, env)
        step("dvc push", ["dvc", "push", "--remote", "dry-run", "--quiet"], repo, env)
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "data/raw", "params.yaml", "dvc.lock", "data/metrics.json",
             "data/reports", "data/plots"],
            cwd=repo, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        pushed = sum(1 for path in remote.rglob("*") if path.is_file())
        print(f"retrain-dry-run: {pushed} files pushed; the pull request would carry:\n{changed}", flush=True)
        if not any(line.endswith(".dvc") for line in changed.splitlines()) or not pushed:
            sys.exit("retrain-dry-run: no new data version was tracked and pushed")
    finally:
        if args.keep:
            print(f"retrain-dry-run: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
