"""api/Dockerfile: lint-clean, multi-stage, non-root, with a health check and a build argument for a model."""

from __future__ import annotations

import re
import subprocess

from tests.support.dockerfiles import instructions as dockerfile_instructions
from tests.support.processes import REPO_ROOT, require_tool

DOCKERFILE = REPO_ROOT / "api" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE)


def test_hadolint_passes():
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_and_runs_as_non_root():
    steps = instructions()
    stages = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(stages) >= 2
    final = steps[max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert any(rest.startswith("--from=") for rest in copies), "the final stage should copy the built venv"


def test_health_check_and_command():
    steps = dict(instructions())
    assert "/health" in steps["HEALTHCHECK"]
    command = steps["CMD"]
    assert '"-m", "api"' in command and '"--baked-model"' in command


def test_a_model_can_be_baked_in_by_build_argument():
    steps = instructions()
    assert ("ARG", 'MODEL_DIR=""') in steps
    assert any(keyword == "RUN" and "${MODEL_DIR}" in rest and "MLmodel" in rest for keyword, rest in steps)


def test_whoever_builds_or_runs_the_image_can_name_the_registered_model():
    """The name and alias are build arguments that reach the environment (their defaults are
    params.yaml's: tests/monitoring/test_stack_images.py checks that); `docker run -e` overrides both."""
    steps = instructions()
    assert {rest.split("=", 1)[0] for keyword, rest in steps if keyword == "ARG"} >= {
        "MODEL_NAME",
        "MODEL_ALIAS",
    }
    environment = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "MODEL_NAME=${MODEL_NAME}" in environment and "MODEL_ALIAS=${MODEL_ALIAS}" in environment


def test_every_base_image_is_pinned_by_tag_and_digest():
    """The form only (a wrong digest passes every offline check); the same base as stages/Dockerfile."""
    bases = [rest.split()[0] for keyword, rest in instructions() if keyword == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
