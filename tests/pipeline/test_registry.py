"""The registry's decisions, in process against a real SQLite store: alias lookup, promote (also only
when there is no production yet), rollback, and the refusals, each with its record in version tags."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from stages.params import Aliases
from stages.registry import Registry, RegistryError, promote, rollback

ALIASES = Aliases(development="development", staging="staging", production="production")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """`model` with three versions and no alias yet, built once (MLflow's schema migrations take seconds)."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("model")
    for _ in range(3):
        client.create_model_version("model", source=(folder / "artifact").as_uri())
    return folder / "registry.db"


@pytest.fixture
def registry(template, tmp_path) -> Registry:
    """A private copy of the template store."""
    shutil.copy(template, tmp_path / "registry.db")
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    return Registry(MlflowClient(tracking_uri=uri, registry_uri=uri), "model", ALIASES, uri)


def tags(registry: Registry, version: str) -> dict[str, str]:
    return dict(registry.client.get_model_version("model", version).tags)


def aliases(registry: Registry) -> dict[str, str]:
    return {
        alias: str(version)
        for alias, version in registry.client.get_registered_model("model").aliases.items()
    }


def test_an_alias_that_is_not_set_is_none_and_first_of_takes_the_first_set(registry):
    assert registry.at("staging") is None and registry.production() is None
    registry.move("production", 2)
    assert str(registry.production().version) == "2"
    alias, version = registry.first_of(["staging", "production"])
    assert (alias, str(version.version)) == ("production", "2")
    with pytest.raises(RegistryError, match="none of the aliases champion"):
        registry.first_of(["champion"])


def test_the_first_promotion_records_that_it_replaced_nothing(registry):
    registry.move("staging", 1)
    message = promote(registry)
    assert "production (none) -> v1" in message
    assert aliases(registry) == {"production": "1"}
    assert tags(registry, "1")["replaced_version"] == "none" and tags(registry, "1")["status"] == "production"


def test_promote_moves_production_archives_the_old_version_and_clears_staging(registry):
    registry.move("production", 1)
    registry.move("staging", 2)
    assert "production v1 -> v2" in promote(registry)
    assert aliases(registry) == {"production": "2"}
    assert tags(registry, "2")["replaced_version"] == "1" and tags(registry, "2")["promoted_by"]
    assert tags(registry, "1")["status"] == "archived" and tags(registry, "1")["replaced_by"] == "2"


def test_promote_first_leaves_an_existing_production_alone(registry):
    registry.move("production", 1)
    registry.move("staging", 2)
    assert "already v1; nothing to do" in promote(registry, only_if_none=True)
    assert aliases(registry) == {"production": "1", "staging": "2"}


def test_promote_without_a_staging_version_is_refused_and_changes_nothing(registry):
    registry.move("production", 1)
    with pytest.raises(RegistryError, match="has no 'staging' version"):
        promote(registry)
    assert aliases(registry) == {"production": "1"}


def test_rollback_returns_to_the_replaced_version_and_marks_the_rolled_back_one(registry):
    registry.move("production", 1)
    registry.move("staging", 2)
    promote(registry)
    assert "production v2 -> v1" in rollback(registry)
    assert aliases(registry) == {"production": "1"}
    assert tags(registry, "2")["status"] == "rolled_back"
    assert tags(registry, "1")["status"] == "production" and "replaced_by" not in tags(registry, "1")


def test_rollback_of_a_first_promotion_is_refused(registry):
    registry.move("staging", 3)
    promote(registry)
    with pytest.raises(RegistryError, match="replaced nothing"):
        rollback(registry)
    assert aliases(registry) == {"production": "3"}
