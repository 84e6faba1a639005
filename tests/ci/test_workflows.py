"""The GitHub workflows cannot run here, so they are linted offline and their promises checked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.processes import REPO_ROOT, require_tool

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
MAKEFILE = (REPO_ROOT / "Makefile").read_text()


def _load(name: str) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); take it back under its name.
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / name).read_text())
    workflow["on"] = workflow.pop(True)
    return workflow


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _uses(workflow: dict) -> list[str]:
    return [step["uses"] for job in workflow["jobs"].values() for step in _steps(job) if "uses" in step]


def test_both_workflows_exist():
    assert {path.name for path in WORKFLOWS} >= {"ci.yml", "cd.yml"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_actionlint_passes_offline(workflow: Path):
    actionlint = require_tool("actionlint")
    shellcheck = require_tool("shellcheck")
    result = subprocess.run(
        [actionlint, f"-shellcheck={shellcheck}", str(workflow.relative_to(REPO_ROOT))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_the_github_workflows_schema_accepts_it(workflow: Path):
    checker = require_tool("check-jsonschema")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dependabot_schema_accepts_it_and_it_covers_python_actions_and_docker():
    checker = require_tool("check-jsonschema")
    config = REPO_ROOT / ".github" / "dependabot.yml"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.dependabot", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ecosystems = {update["package-ecosystem"] for update in yaml.safe_load(config.read_text())["updates"]}
    assert ecosystems >= {"uv", "github-actions", "docker"}


def test_the_offline_linters_reject_a_broken_workflow(tmp_path):
    """Guards the two tests above against passing vacuously."""
    actionlint = require_tool("actionlint")
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v6\n        with:\n          fetch-dept: 0\n"
    )
    result = subprocess.run([actionlint, str(broken)], capture_output=True, text=True)
    assert result.returncode != 0
    assert 'input "fetch-dept" is not defined' in result.stdout


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_every_action_is_pinned_to_a_commit_with_its_release_in_a_comment(workflow: Path):
    """The form only: a tag can be moved, a commit cannot, and a wrong SHA passes every offline check (the
    note of issue 13 says where each came from). Dependabot reads the comment to propose the next one."""
    uses = _uses(_load(workflow.name))
    lines = [line.strip() for line in workflow.read_text().splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert len(lines) == len(uses) > 0
    for line in lines:
        assert re.fullmatch(r"(- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", line), line
    versions: dict[str, set[str]] = {}
    for line in lines:
        action, _, rest = line.split("uses: ")[1].partition("@")
        versions.setdefault(action, set()).add(rest)
    assert all(len(pins) == 1 for pins in versions.values()), f"one pin per action: {versions}"


def test_only_cd_s_production_environment_holds_the_credentials_that_move_production():
    for workflow in WORKFLOWS:
        for name, job in _load(workflow.name)["jobs"].items():
            text = yaml.safe_dump(job)
            if "MLFLOW_DEPLOYER_" in text:
                assert (workflow.name, name) == ("cd.yml", "deploy")
                assert job["environment"]["name"] == "production"
    ci = (REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "secrets.MLFLOW_PIPELINE_USERNAME" in ci and "secrets.MLFLOW_PIPELINE_PASSWORD" in ci
    assert "secrets.MLFLOW_TRACKING_USERNAME" not in ci and "secrets.MLFLOW_TRACKING_PASSWORD" not in ci


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_permissions_are_empty_by_default_and_granted_per_job(workflow: Path):
    loaded = _load(workflow.name)
    assert loaded["permissions"] == {}
    for name, job in loaded["jobs"].items():
        assert "permissions" in job, f"job {name} sets no permissions"
        assert "write-all" not in str(job["permissions"])


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_every_make_target_a_workflow_calls_exists(workflow: Path):
    defined = set(re.findall(r"^([a-zA-Z][\w-]*):", MAKEFILE, flags=re.MULTILINE))
    lines = [
        line.strip()
        for job in _load(workflow.name)["jobs"].values()
        for step in _steps(job)
        for line in step.get("run", "").splitlines()
    ]
    called = {
        target
        for line in lines
        if line.startswith("make ")
        for target in line.split()[1:]
        if "=" not in target and not target.startswith("-")
    }
    assert called, "the workflow calls no make target"
    assert called <= defined, f"not in the Makefile: {sorted(called - defined)}"


def test_ci_runs_on_push_and_pull_request_and_cancels_outdated_runs():
    ci = _load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    assert ci["concurrency"]["group"] == "ci-${{ github.ref }}"
    assert ci["concurrency"]["cancel-in-progress"] == "${{ github.ref != 'refs/heads/main' }}"
    assert set(ci["jobs"]) >= {"lint", "test", "pipeline", "build"}


def test_the_test_job_has_postgres_and_runs_make_test():
    job = _load("ci.yml")["jobs"]["test"]
    postgres = job["services"]["postgres"]
    assert postgres["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert postgres["env"]["POSTGRES_DB"] == "test"
    assert "5432:5432" in postgres["ports"]
    assert [step["run"] for step in _steps(job) if "run" in step] == ["make test"]


def test_the_pipeline_job_reproduces_checks_the_lock_gates_and_posts_one_comment():
    job = _load("ci.yml")["jobs"]["pipeline"]
    steps = _steps(job)
    assert steps[0]["uses"].startswith("actions/checkout@") and steps[0]["with"]["fetch-depth"] == 0
    runs = [step.get("run", "") for step in steps]
    order = [
        next(i for i, run in enumerate(runs) if needle in run)
        for needle in ("make repro", "git diff --exit-code dvc.lock", "make pr-comment", "make gate")
    ]
    assert order == sorted(order)
    post = next(
        step for step in steps if step.get("uses", "").startswith("marocchino/sticky-pull-request-comment")
    )
    assert "github.event.pull_request.head.repo.full_name == github.repository" in post["if"]
    assert post["with"]["header"]  # the key that makes it one comment, edited in place
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_the_image_is_pushed_only_from_main_and_tags_and_tagged_with_sha_semver_and_model():
    job = _load("ci.yml")["jobs"]["build"]
    assert set(job["needs"]) == {"lint", "test", "pipeline"}
    push_rule = job["env"]["PUSH"]
    assert "github.event_name == 'push'" in push_rule
    assert "refs/heads/main" in push_rule and "refs/tags/v" in push_rule
    meta = next(step for step in _steps(job) if step.get("uses", "").startswith("docker/metadata-action"))
    tags = meta["with"]["tags"]
    assert (
        "type=sha" in tags
        and "type=semver" in tags
        and "model-v${{ needs.pipeline.outputs.model-version }}" in tags
    )
    build = next(step for step in _steps(job) if step.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "api/Dockerfile"
    assert build["with"]["push"] == "${{ env.PUSH == 'true' }}"
    assert build["with"]["cache-from"] == "type=gha" and build["with"]["cache-to"].startswith("type=gha")


def test_cd_follows_a_successful_ci_on_main_through_the_production_environment():
    cd = _load("cd.yml")
    assert cd["on"] == {"workflow_run": {"workflows": ["ci"], "types": ["completed"], "branches": ["main"]}}
    assert cd["concurrency"]["cancel-in-progress"] is False
    job = cd["jobs"]["deploy"]
    assert "github.event.workflow_run.conclusion == 'success'" in job["if"]
    assert "github.event.workflow_run.event == 'push'" in job["if"]
    assert job["environment"]["name"] == "production"
    assert any("make deploy" in step.get("run", "") for step in _steps(job))
