"""Where a model comes from: the registry (which version an alias points at, and its files) or a local
directory, with what the registry knows about that version."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.settings import Settings

log = logging.getLogger(__name__)

# Written by MLflow into a model downloaded from `models:/<name>/<version>`.
REGISTERED_MODEL_META = "registered_model_meta"


@dataclass(frozen=True)
class RegistryVersion:
    """What the registry says about the version being served (empty for an unregistered local model)."""

    name: str
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def registry_client(settings: Settings) -> Any:
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def resolve_alias(settings: Settings) -> RegistryVersion:
    """The version the alias points at now. Raises if the registry is unreachable or the alias is missing."""
    name, alias = settings.registered_model
    version = registry_client(settings).get_model_version_by_alias(name, alias)
    return RegistryVersion(
        name=version.name,
        version=str(version.version),  # an int with SQLite, a string over REST
        alias=alias,
        run_id=version.run_id,
        source=version.source,
        tags=dict(version.tags or {}),
    )


@contextmanager
def downloaded(settings: Settings, registered: RegistryVersion) -> Iterator[Path]:
    """Exactly this version's files (not the alias's, which may move meanwhile), in a temporary directory."""
    import mlflow

    # The version's own artifact location: `models:/` URIs would be resolved against MLflow's global
    # registry URI instead of this service's settings.
    location = registry_client(settings).get_model_version_download_uri(registered.name, registered.version)
    with tempfile.TemporaryDirectory(prefix="model-") as workdir:
        yield Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=workdir, tracking_uri=settings.mlflow_tracking_uri
            )
        )


@contextmanager
def local_model(settings: Settings) -> Iterator[tuple[Path, RegistryVersion]]:
    """MODEL_URI's files: a model directory (baked into an image) as it is, any other MLflow model URI
    downloaded to a temporary directory; and what is known of its registered version."""
    import mlflow

    assert settings.model_uri is not None
    path = Path(settings.model_uri.removeprefix("file://"))
    if path.is_dir():
        yield path, _local_registry_version(path, settings)
        return
    with tempfile.TemporaryDirectory(prefix="model-") as workdir:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=settings.model_uri, dst_path=workdir, tracking_uri=settings.mlflow_tracking_uri
            )
        )
        yield local, _local_registry_version(local, settings)


def _local_registry_version(path: Path, settings: Settings) -> RegistryVersion:
    """A model downloaded from `models:/<name>/<version>` remembers both in `registered_model_meta`; when a
    registry is configured too, its tags (git SHA, data hash, metrics) are looked up, best effort. Without
    either, the model is named by MODEL_NAME, or by its directory."""
    import yaml
    from mlflow.exceptions import MlflowException

    meta_file = path / REGISTERED_MODEL_META
    meta = yaml.safe_load(meta_file.read_text()) if meta_file.is_file() else None
    if not isinstance(meta, dict) or not meta.get("model_name"):
        return RegistryVersion(name=settings.model_name or path.name, source=settings.model_uri)
    name, version = str(meta["model_name"]), str(meta.get("model_version", "")) or None
    if settings.mlflow_tracking_uri and version:
        try:
            found = registry_client(settings).get_model_version(name, version)
            return RegistryVersion(
                name=name,
                version=version,
                run_id=found.run_id,
                source=found.source,
                tags=dict(found.tags or {}),
            )
        except MlflowException as error:  # unreachable, or without that version: optional for a local model
            log.info("no registry details for %s v%s: %s", name, version, error)
    return RegistryVersion(name=name, version=version, source=settings.model_uri)
