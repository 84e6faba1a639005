"""Find, download and check a model: from the registry by alias, or from a local directory."""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from api.compiler import compile_pipeline
from api.predictor import Columns, FastPredictor, GenericPredictor, Predictor, UnsupportedPipeline
from api.schema import RequestModels, build_request_models
from api.settings import Settings

log = logging.getLogger(__name__)

METRIC_TAG_PREFIX = "metric."
# Written by MLflow into a model downloaded from `models:/<name>/<version>`.
REGISTERED_MODEL_META = "registered_model_meta"
VERIFY_SEED = 20240601
FEW_ROWS_CHECK = 7
# What the classifiers' own predict() uses; a model logged without a threshold of its own means this.
DEFAULT_DECISION_THRESHOLD = 0.5


class ModelCheckFailed(Exception):
    """The model loaded but does not behave: it must not serve."""


@dataclass(frozen=True)
class RegistryVersion:
    """What the registry says about the version being served (empty for an unregistered local model)."""

    name: str
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedModel:
    registry: RegistryVersion
    predictor: Predictor
    fallback_reason: str | None
    requests: RequestModels
    labels: tuple[str, str]  # (negative, positive)
    threshold: float  # the positive label when P(positive) > threshold
    feature_metadata: dict[str, Any]
    loaded_at: datetime
    max_parity_error: float | None

    @property
    def fast(self) -> bool:
        return self.fallback_reason is None

    def describe(self) -> dict[str, Any]:
        tags = self.registry.tags
        return {
            "name": self.registry.name,
            "version": self.registry.version,
            "alias": self.registry.alias,
            "run_id": self.registry.run_id,
            "source": self.registry.source,
            "git_sha": tags.get("git_sha"),
            "data_hash": tags.get("data_hash"),
            "status": tags.get("status"),
            "dvc_exp_name": tags.get("dvc_exp_name"),
            "metrics": _metrics_from_tags(tags),
            "loaded_at": self.loaded_at.isoformat(),
            "predictor": self.predictor.kind,
            "fallback_reason": self.fallback_reason,
            "positive_label": self.labels[1],
            "decision_threshold": self.threshold,
        }


def _metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    metrics = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                metrics[key.removeprefix(METRIC_TAG_PREFIX)] = float(value)
            except ValueError:
                log.warning("tag %s=%r is not a number; left out of /model", key, value)
    return metrics


def registry_client(settings: Settings):
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def resolve_alias(settings: Settings) -> RegistryVersion:
    """The version the alias points at now. Raises if the registry is unreachable or the alias is missing."""
    version = registry_client(settings).get_model_version_by_alias(settings.model_name, settings.model_alias)
    return RegistryVersion(
        name=version.name,
        version=str(version.version),  # an int with SQLite, a string over REST
        alias=settings.model_alias,
        run_id=version.run_id,
        source=version.source,
        tags=dict(version.tags or {}),
    )


def load_registered(settings: Settings, registered: RegistryVersion) -> ServedModel:
    """Download exactly this version (not the alias, which may move meanwhile) and build it."""
    import mlflow

    # The version's own artifact location: `models:/` URIs would be resolved against MLflow's global
    # registry URI instead of this service's settings.
    location = registry_client(settings).get_model_version_download_uri(registered.name, registered.version)
    with tempfile.TemporaryDirectory(prefix="model-") as workdir:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=workdir, tracking_uri=settings.mlflow_tracking_uri
        )
        return build(Path(local), registered, settings)


def load_local(settings: Settings) -> ServedModel:
    """A model directory (baked into an image) or any MLflow model URI, served without following an alias."""
    import mlflow

    assert settings.model_uri is not None
    path = Path(settings.model_uri.removeprefix("file://"))
    if path.is_dir():
        return build(path, _local_registry_version(path, settings), settings)
    with tempfile.TemporaryDirectory(prefix="model-") as workdir:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=settings.model_uri, dst_path=workdir, tracking_uri=settings.mlflow_tracking_uri
            )
        )
        return build(local, _local_registry_version(local, settings), settings)


def _local_registry_version(path: Path, settings: Settings) -> RegistryVersion:
    """A model downloaded from `models:/<name>/<version>` remembers both in `registered_model_meta`; when a
    registry is configured too, its tags (git SHA, data hash, metrics) are looked up, best effort."""
    import yaml

    meta_file = path / REGISTERED_MODEL_META
    meta = yaml.safe_load(meta_file.read_text()) if meta_file.is_file() else None
    if not isinstance(meta, dict) or not meta.get("model_name"):
        return RegistryVersion(name=settings.model_name, source=settings.model_uri)
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
        except Exception as error:  # the registry is optional for a local model
            log.info("no registry details for %s v%s: %s", name, version, error)
    return RegistryVersion(name=name, version=version, source=settings.model_uri)


def build(path: Path, registered: RegistryVersion, settings: Settings) -> ServedModel:
    """Load the pipeline, build the request schema, compile the fast path and prove it matches."""
    import mlflow.sklearn
    from mlflow.models import Model

    logged = Model.load(str(path))
    metadata = (logged.metadata or {}).get("feature_metadata")
    if not metadata:
        raise ModelCheckFailed("the model was logged without metadata['feature_metadata']")
    labels, threshold = decision_rule(metadata)
    examples = _example_rows(logged, path)
    requests = build_request_models(logged.signature, metadata, examples, settings.max_batch_size)
    pipeline = mlflow.sklearn.load_model(str(path))
    _single_threaded(pipeline)
    columns = requests.columns
    known = {
        name: set(metadata["categorical"].get(name, {}).get("categories", [])) for name in columns.categorical
    }
    generic = GenericPredictor(pipeline, columns, known, metadata["positive_label"])
    probe = examples + synthetic_rows(metadata, columns, settings.verify_rows)
    expected, _ = generic.predict(probe)
    if not np.isfinite(expected).all():
        raise ModelCheckFailed("the pipeline returns non-finite probabilities on its input example or probes")

    predictor: Predictor = generic
    fallback_reason: str | None = None
    max_error: float | None = None
    try:
        fast = compile_pipeline(pipeline, columns, metadata["positive_label"])
        max_error = _max_error(fast, probe, expected)
        if not max_error <= settings.parity_tolerance:
            raise UnsupportedPipeline(
                f"fast path differs from the pipeline by {max_error:.3g} on {len(probe)} rows"
            )
        predictor = fast
    except UnsupportedPipeline as error:
        fallback_reason = str(error)
    except Exception as error:  # a shape the compiler misreads must cost speed, never the model
        fallback_reason = f"the compiler failed: {type(error).__name__}: {error}"
    if fallback_reason is not None:
        log.warning(
            "model %s v%s: serving the generic pandas path (%s)",
            registered.name,
            registered.version,
            fallback_reason,
        )
    log.info(
        "model %s v%s: %s predictor, verified on %d rows (max error %s)",
        registered.name,
        registered.version,
        predictor.kind,
        len(probe),
        max_error,
    )
    return ServedModel(
        registry=registered,
        predictor=predictor,
        fallback_reason=fallback_reason,
        requests=requests,
        labels=labels,
        threshold=threshold,
        feature_metadata=metadata,
        loaded_at=datetime.now(UTC),
        max_parity_error=max_error,
    )


def decision_rule(metadata: dict[str, Any]) -> tuple[tuple[str, str], float]:
    """(negative, positive) labels and the decision threshold. The probabilities are P(positive_label), so
    the positive label is named by `positive_label`, never by its place in `labels`."""
    labels, positive = metadata.get("labels"), metadata.get("positive_label")
    if not isinstance(labels, list) or len(labels) != 2 or labels[0] == labels[1]:
        raise ModelCheckFailed(f"metadata['labels'] must hold two different labels, not {labels!r}")
    if positive not in labels:
        raise ModelCheckFailed(f"the positive label {positive!r} is not one of the labels {labels}")
    (negative,) = [label for label in labels if label != positive]
    threshold = metadata.get("decision_threshold", DEFAULT_DECISION_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise ModelCheckFailed(f"the decision threshold {threshold!r} is not a number in (0, 1)")
    return (str(negative), str(positive)), float(threshold)


def _max_error(fast: FastPredictor, rows: list[dict[str, Any]], expected: np.ndarray) -> float:
    # Every route through the fast path serves traffic (one record, a few, many): each is checked.
    errors = [np.abs(fast.predict(rows)[0] - expected)]
    for start in range(0, len(rows), FEW_ROWS_CHECK):
        chunk = fast.predict(rows[start : start + FEW_ROWS_CHECK])[0]
        errors.append(np.abs(chunk - expected[start : start + FEW_ROWS_CHECK]))
    singles = np.array([fast.predict_one(row)[0] for row in rows])
    errors.append(np.abs(singles - expected))
    return float(max(np.max(error) for error in errors))


def _single_threaded(pipeline: Any) -> None:
    """A loaded model forgets n_jobs; with every core per call, small requests get latency spikes."""
    for _, step in getattr(pipeline, "steps", []):
        if "n_jobs" in step.get_params():
            step.set_params(n_jobs=1)
        if hasattr(step, "get_booster"):
            step.get_booster().set_param({"nthread": 1})


def _example_rows(logged: Any, path: Path) -> list[dict[str, Any]]:
    frame = logged.load_input_example(str(path))
    if frame is None:
        return []
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{key: _plain(value) for key, value in row.items()} for row in rows]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def synthetic_rows(metadata: dict[str, Any], columns: Columns, count: int) -> list[dict[str, Any]]:
    """Rows that cover every allowed category, missing values and the whole allowed range of each number:
    the fast path has to agree with the pipeline on all of it, not only on typical rows."""
    if count == 0:
        return []
    rng = np.random.default_rng(VERIFY_SEED)
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for name in columns.numeric:
        meta = metadata.get("numeric", {}).get(name, {})
        low = meta.get("min", meta.get("observed_min", 0.0))
        high = meta.get("max", meta.get("observed_max", 1.0))
        values = rng.uniform(low, high, size=count)
        edges = meta.get("histogram", {}).get("edges", [])
        if edges:  # also the values training actually had
            values[: count // 2] = rng.choice(np.asarray(edges, dtype=float), size=count // 2)
        if str(meta.get("dtype", "")).startswith(("int", "uint")):
            values = np.round(values)
        for row, value in zip(rows, values.tolist(), strict=True):
            row[name] = value
        if meta.get("nullable"):
            for index in rng.choice(count, size=max(1, count // 10), replace=False):
                rows[int(index)][name] = None
    for name in columns.categorical:
        meta = metadata.get("categorical", {}).get(name, {})
        choices: list[Any] = list(meta.get("allowed") or meta.get("categories") or ["__unseen__"])
        if meta.get("nullable"):
            choices.append(None)
        order = rng.permutation(count)
        for position, index in enumerate(order.tolist()):
            rows[index][name] = choices[position % len(choices)]
    return rows
