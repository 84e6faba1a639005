"""The two registered models, their aliases and their version tags, behind one small class.

Candidates are registered under `mlflow.candidate_model_name` (aliases development and staging); the
service loads `mlflow.model_name@production`. MLflow's permissions are per registered model, and moving
an alias needs the same right as registering a version, so two models are what lets CI register
candidates without being able to move `production` (stages/registry/access.py grants the rights)."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from stages.errors import StageError
from stages.params import Aliases, load_params
from stages.tracking import tracking_uri


class RegistryError(StageError):
    """A registry operation that cannot go ahead; the message says why."""


@dataclass(frozen=True)
class Registry:
    client: MlflowClient
    model_name: str
    aliases: Aliases
    uri: str  # the registry's store: decides which lock serialises its decisions (stages.registry.locks)
    candidate_name: str  # where versions are registered and staged; model_name holds only promoted copies

    @property
    def candidates(self) -> Registry:
        """The same registry seen from the candidate model: its tags, its lock."""
        return replace(self, model_name=self.candidate_name)

    def home(self, alias: str) -> str:
        """The registered model an alias lives on: development and staging on the candidates,
        production (and any other alias) on the served model."""
        if alias in (self.aliases.development, self.aliases.staging):
            return self.candidate_name
        return self.model_name

    def at(self, alias: str) -> ModelVersion | None:
        """The version behind an alias, or None when the alias (or the model) does not exist yet."""
        try:
            return self.client.get_model_version_by_alias(self.home(alias), alias)
        except MlflowException:
            return None

    def production(self) -> ModelVersion | None:
        return self.at(self.aliases.production)

    def staging(self) -> ModelVersion | None:
        return self.at(self.aliases.staging)

    def first_of(self, aliases: list[str]) -> tuple[str, ModelVersion]:
        """The first of these aliases that is set, and its version."""
        for alias in aliases:
            version = self.at(alias)
            if version is not None:
                return alias, version
        raise RegistryError(f"{self.model_name} has none of the aliases {', '.join(aliases)}")

    def move(self, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(self.home(alias), alias, str(version))

    def clear(self, alias: str) -> None:
        self.client.delete_registered_model_alias(self.home(alias), alias)

    def tag(self, version: str | int, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, value)

    def untag(self, version: str | int, key: str) -> None:
        self.client.delete_model_version_tag(self.model_name, str(version), key)


def open_registry(
    uri: str | None = None, model_name: str | None = None, candidate_name: str | None = None
) -> Registry:
    """The project's registered models (params.yaml `mlflow`, or other names) in the store
    MLFLOW_TRACKING_URI names, or the repository's SQLite default."""
    names = load_params().mlflow
    uri = uri or tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return Registry(
        client,
        model_name or names.model_name,
        names.aliases,
        uri,
        candidate_name or names.candidate_model_name,
    )


def actor() -> str:
    """Who moves an alias: the GitHub actor in CI, else the MLflow user, else the local user."""
    return os.environ.get("GITHUB_ACTOR") or os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def stamp() -> dict[str, str]:
    """When and by whom, for the tags that record a move."""
    return {"at": datetime.now(UTC).isoformat(timespec="seconds"), "by": actor()}
