"""`make deploy`'s sequence: promote, roll out, verify, roll back, with a fake registry and platform."""

from __future__ import annotations

import subprocess
import sys

from stages.ci.deploy import Steps, deploy, post_hook
from stages.ci.deploy_check import Expected, verify
from tests.ci.fake_service import ServiceState, fake_service
from tests.support.processes import REPO_ROOT, subprocess_env

NAME = "adult-income"


class FakeRegistry:
    def __init__(self, production: str | None, staging: str | None) -> None:
        self.production_version, self.staging, self.replaced = production, staging, None
        self.calls: list[str] = []

    def production(self) -> Expected | None:
        return None if self.production_version is None else Expected(NAME, self.production_version)

    def staged(self) -> Expected | None:
        return None if self.staging is None else Expected(NAME, self.staging)

    def promote(self) -> None:
        """Like stages.registry.promote: production takes the staging version, which loses its alias."""
        self.calls.append("promote")
        self.replaced, self.production_version, self.staging = self.production_version, self.staging, None

    def rollback(self) -> None:
        self.calls.append("rollback")
        self.production_version = self.replaced


def _steps(registry: FakeRegistry, url: str, hook: bool = True) -> Steps:
    return Steps(
        production=registry.production,
        staging=registry.staged,
        promote=registry.promote,
        rollback=registry.rollback,
        rollout=(lambda image, model: post_hook(f"{url}/hook", "s3cret", image, model)) if hook else None,
        verify=lambda expected: verify(url, expected, timeout=0.0, interval=0.0),
    )


def test_a_good_image_is_promoted_rolled_out_and_verified():
    registry = FakeRegistry(production="3", staging="4")
    state = ServiceState(images={"api:new": "4", "api:old": "3"})
    with fake_service(state) as url:
        assert deploy(_steps(registry, url), image="api:new", previous_image="api:old")
    assert registry.calls == ["promote"]
    assert state.hook_calls == [{"image": "api:new", "model_name": NAME, "model_version": "4"}]
    assert state.hook_headers[0]["Authorization"] == "Bearer s3cret"


def test_a_broken_image_rolls_back_both_the_alias_and_the_image():
    registry = FakeRegistry(production="3", staging="4")
    state = ServiceState(images={"api:old": "3"})  # api:new never turns ready
    with fake_service(state) as url:
        assert not deploy(_steps(registry, url), image="api:new", previous_image="api:old")
    assert registry.calls == ["promote", "rollback"]
    assert registry.production_version == "3"
    assert [call["image"] for call in state.hook_calls] == ["api:new", "api:old"]
    assert state.model == {"name": NAME, "version": "3"}


def test_a_model_only_deploy_fails_and_rolls_back_when_the_service_keeps_the_old_version():
    registry = FakeRegistry(production="3", staging="4")
    state = ServiceState()  # serves v3 and never reloads
    with fake_service(state) as url:
        assert not deploy(_steps(registry, url, hook=False), image="api:new", previous_image=None)
    assert registry.calls == ["promote", "rollback"]
    assert state.hook_calls == []


def test_without_a_staging_version_the_image_ships_with_productions_model():
    registry = FakeRegistry(production="3", staging=None)
    state = ServiceState(images={"api:new": "3"})
    with fake_service(state) as url:
        assert deploy(_steps(registry, url), image="api:new", previous_image="api:old")
    assert registry.calls == []
    assert state.hook_calls == [{"image": "api:new", "model_name": NAME, "model_version": "3"}]


def test_a_failure_without_promotion_rolls_back_the_image_but_not_the_alias():
    registry = FakeRegistry(production="3", staging=None)
    state = ServiceState(images={"api:old": "3"})
    with fake_service(state) as url:
        assert not deploy(_steps(registry, url), image="api:new", previous_image="api:old")
    assert registry.calls == []  # the alias did not move, so there is nothing to move back
    assert [call["image"] for call in state.hook_calls] == ["api:new", "api:old"]
    assert state.ready


def test_the_very_first_deploy_has_nothing_to_roll_back_to():
    registry = FakeRegistry(production=None, staging="1")
    with fake_service(ServiceState(ready=False)) as url:
        assert not deploy(_steps(registry, url, hook=False), image=None, previous_image=None)
    assert registry.calls == ["promote"]


def test_an_unreachable_hook_counts_as_a_failed_rollout():
    registry = FakeRegistry(production="3", staging="4")
    with fake_service(ServiceState()) as url:
        steps = _steps(registry, url)
        broken = Steps(
            **{**steps.__dict__, "rollout": lambda image, model: post_hook(f"{url}/nope", None, image, model)}
        )
        assert not deploy(broken, image="api:new", previous_image=None)
    assert registry.calls == ["promote", "rollback"]


# ---------------------------------------------------------------- `python -m stages.ci.deploy`, for real


def _registry(tmp_path, production: str, staging: str) -> str:
    """A SQLite registry holding candidates 1..2 of the project's model, production on the served copy of
    `production`, `staging` on candidate `staging`."""
    from mlflow import MlflowClient

    from stages.params import load_params

    names = load_params().mlflow
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(names.candidate_model_name)
    for _ in range(2):
        client.create_model_version(names.candidate_model_name, source=(tmp_path / "model").as_uri())
    served = client.copy_model_version(f"models:/{names.candidate_model_name}/{production}", names.model_name)
    client.set_registered_model_alias(names.model_name, names.aliases.production, served.version)
    client.set_registered_model_alias(names.candidate_model_name, names.aliases.staging, staging)
    return uri


def _production_version(uri: str) -> str:
    from mlflow import MlflowClient

    from stages.params import load_params

    names = load_params().mlflow
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return str(client.get_model_version_by_alias(names.model_name, names.aliases.production).version)


def _make_deploy(uri: str, url: str, image: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(
        MLFLOW_TRACKING_URI=uri,
        DEPLOY_URL=url,
        DEPLOY_HOOK_URL=f"{url}/hook",
        IMAGE=image,
        PREVIOUS_IMAGE="api:old",
    )
    env.pop("DEPLOY_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "stages.ci.deploy", "--timeout", "1", "--interval", "0.2"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_deploy_promotes_in_a_real_registry_and_verifies(tmp_path):
    uri = _registry(tmp_path, production="1", staging="2")
    state = ServiceState(model={"name": NAME, "version": "1"}, images={"api:new": "2", "api:old": "1"})
    with fake_service(state) as url:
        result = _make_deploy(uri, url, "api:new")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _production_version(uri) == "2"
    assert "deploy: verified: ready and serving adult-income v2" in result.stdout


def test_deploy_rolls_a_real_registry_back_when_verification_fails(tmp_path):
    uri = _registry(tmp_path, production="1", staging="2")
    state = ServiceState(model={"name": NAME, "version": "1"}, images={"api:old": "1"})
    with fake_service(state) as url:
        result = _make_deploy(uri, url, "api:broken")
    assert result.returncode == 1, result.stdout + result.stderr
    assert _production_version(uri) == "1"
    assert [call["image"] for call in state.hook_calls] == ["api:broken", "api:old"]
    assert "deploy: rolled back to adult-income v1, serving again" in result.stdout
