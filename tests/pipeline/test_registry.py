"""The registry's decisions, in process against a real SQLite store: alias lookup, promote (also only
when there is no production yet), rollback, and the refusals, each with its record in version tags.
Candidates are registered under one model, `candidates`; promote copies them into the served `model`."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from stages.params import Aliases
from stages.registry import Registry, RegistryError, promote, rollback

ALIASES = Aliases(development="development", staging="staging", production="production")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """`candidates` with three versions and no alias yet, and an empty served `model`, built once (MLflow's
    schema migrations take seconds)."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("candidates")
    client.create_registered_model("model")
    for number in range(3):
        client.create_model_version(
            "candidates", source=(folder / "artifact").as_uri(), tags={"training_run_id": f"run-{number + 1}"}
        )
    return folder / "registry.db"


@pytest.fixture
def registry(template, tmp_path) -> Registry:
    """A private copy of the template store."""
    shutil.copy(template, tmp_path / "registry.db")
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    return Registry(MlflowClient(tracking_uri=uri, registry_uri=uri), "model", ALIASES, uri, "candidates")


def tags(registry: Registry, version: str, model: str = "model") -> dict[str, str]:
    return dict(registry.client.get_model_version(model, version).tags)


def aliases(registry: Registry, model: str = "model") -> dict[str, str]:
    return {
        alias: str(version) for alias, version in registry.client.get_registered_model(model).aliases.items()
    }


def promoted(registry: Registry, candidate: int) -> str:
    registry.move("staging", candidate)
    return promote(registry)


def test_aliases_live_on_their_model_and_first_of_takes_the_first_set(registry):
    assert registry.at("staging") is None and registry.production() is None
    registry.move("staging", 2)
    assert aliases(registry, "candidates") == {"staging": "2"} and aliases(registry) == {}
    alias, version = registry.first_of(["staging", "production"])
    assert (alias, version.name, str(version.version)) == ("staging", "candidates", "2")
    with pytest.raises(RegistryError, match="none of the aliases champion"):
        registry.first_of(["champion"])


def test_the_first_promotion_copies_the_candidate_and_records_its_lineage(registry):
    message = promoted(registry, 2)
    assert "production (none) -> v1, a copy of candidates v2" in message
    assert aliases(registry) == {"production": "1"} and aliases(registry, "candidates") == {}
    served = registry.client.get_model_version("model", "1")
    assert served.source == "models:/candidates/2"
    assert served.tags["candidate_version"] == "2" and served.tags["training_run_id"] == "run-2"
    assert served.tags["replaced_version"] == "none" and served.tags["status"] == "production"
    assert tags(registry, "2", "candidates")["status"] == "promoted"
    assert tags(registry, "2", "candidates")["served_version"] == "1"


def test_promote_moves_production_archives_the_old_version_and_clears_staging(registry):
    promoted(registry, 1)
    assert "production v1 -> v2" in promoted(registry, 2)
    assert aliases(registry) == {"production": "2"} and aliases(registry, "candidates") == {}
    assert tags(registry, "2")["replaced_version"] == "1" and tags(registry, "2")["promoted_by"]
    assert tags(registry, "1")["status"] == "archived" and tags(registry, "1")["replaced_by"] == "2"


def test_promoting_the_candidate_production_came_from_makes_no_second_copy(registry):
    promoted(registry, 1)
    assert "(candidate v1) is already production" in promoted(registry, 1)
    assert len(registry.client.search_model_versions("name = 'model'")) == 1


def test_promote_first_leaves_an_existing_production_alone(registry):
    promoted(registry, 1)
    registry.move("staging", 2)
    assert "already v1; nothing to do" in promote(registry, only_if_none=True)
    assert aliases(registry) == {"production": "1"} and aliases(registry, "candidates") == {"staging": "2"}


def test_promote_without_a_staging_version_is_refused_and_changes_nothing(registry):
    promoted(registry, 1)
    with pytest.raises(RegistryError, match="has no 'staging' version"):
        promote(registry)
    assert aliases(registry) == {"production": "1"}


def test_rollback_returns_to_the_replaced_version_and_marks_the_rolled_back_one(registry):
    promoted(registry, 1)
    promoted(registry, 2)
    assert "production v2 -> v1" in rollback(registry)
    assert aliases(registry) == {"production": "1"}
    assert tags(registry, "2")["status"] == "rolled_back"
    assert tags(registry, "1")["status"] == "production" and "replaced_by" not in tags(registry, "1")


def test_rollback_of_a_first_promotion_is_refused(registry):
    promoted(registry, 3)
    with pytest.raises(RegistryError, match="replaced nothing"):
        rollback(registry)
    assert aliases(registry) == {"production": "1"}
