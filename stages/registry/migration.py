"""Give a version registered before serving artifacts existed its serving artifact, so that the service
serves it without ALLOW_PICKLE_MODELS and `register` can score it as an incumbent.

This is the one place the project unpickles a model from the registry, and only on an operator's word:
`make migrate-serving VERSION=<n>` for a version whose origin you trust (it ran through this pipeline).
The artifact is logged into the version's logged model, and its digests are tagged on every registered
version of that logged model (a promoted copy shares its candidate's)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from api.artifact import DIGEST_TAG, SERVING_DIR
from stages.registry.versions import Registry, RegistryError
from stages.serving import log_serving_artifact


def logged_model_id(registry: Registry, version: ModelVersion, depth: int = 0) -> str | None:
    """The logged model behind a version: its own field (not every store fills it), its `models:/m-...`
    source, or, for a promoted copy (`models:/<candidates>/<n>`), its candidate's."""
    if version.model_id:
        return str(version.model_id)
    source = version.source or ""
    reference = source.removeprefix("models:/")
    if source.startswith("models:/m-"):
        return reference
    name, _, number = reference.rpartition("/")
    if source.startswith("models:/") and name and number.isdigit() and depth < 3:
        return logged_model_id(registry, registry.client.get_model_version(name, number), depth + 1)
    return None


def add_serving_artifact(registry: Registry, version: str) -> str:
    """What was done, for the log. `registry.model_name` is the registered model the version is of."""
    client, name = registry.client, registry.model_name
    found = client.get_model_version(name, version)
    if DIGEST_TAG in (found.tags or {}):
        return f"{name} v{version} already has a serving artifact ({DIGEST_TAG} is set): nothing to do"
    model_id = logged_model_id(registry, found)
    if model_id is None:
        raise RegistryError(
            f"{name} v{version} is not backed by a logged model (source {found.source}): re-register it "
            "by running the pipeline at its commit instead"
        )
    location = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="migrate-") as workdir:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=workdir))
        if (local / SERVING_DIR).exists():
            raise RegistryError(
                f"{name} v{version} has a {SERVING_DIR}/ artifact but no {DIGEST_TAG} tag: it was not "
                "written by this pipeline's train stage; re-register it instead of trusting those files"
            )
        logged = mlflow.models.Model.load(str(local))
        metadata = (logged.metadata or {}).get("feature_metadata")
        if not metadata:
            raise RegistryError(f"{name} v{version} was logged without metadata['feature_metadata']")
        example = logged.load_input_example(str(local))
        model = mlflow.sklearn.load_model(str(local))  # the operator vouches for this pickle
        digests = log_serving_artifact(model_id, model, example, metadata)
    if digests is None:
        raise RegistryError(f"{name} v{version}'s pipeline has a shape the serving artifact cannot hold")
    tagged = []
    for model_name in dict.fromkeys((registry.model_name, registry.candidate_name)):
        for other in client.search_model_versions(f"name = '{model_name}'"):
            if logged_model_id(registry, other) == model_id:
                client.set_model_version_tag(model_name, str(other.version), DIGEST_TAG, digests)
                tagged.append(f"{model_name} v{other.version}")
    return f"logged {SERVING_DIR}/ into {model_id} and tagged {', '.join(tagged)}"
