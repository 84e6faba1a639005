"""Build a model that may serve: read its contract and decision rule, build its request models, and load
its predictor from the serving artifact (api/artifact.py), verified, with no unpickling. Only when
ALLOW_PICKLE_MODELS=true, a model without that artifact is unpickled, compiled when it can be, else served
through pandas. Where the files come from is api/registry.py's business."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from api.artifact import DIGEST_TAG, SERVING_DIR, ArtifactRefused, load_serving, parse_digests
from api.fast import UnsupportedPipeline, compile_predictor, synthetic_rows, verify_parity
from api.predictor import GenericPredictor, Label, Predictor
from api.process import native_threads
from api.registry import RegistryVersion, downloaded, local_model
from api.requests import RequestModels, build_request_models
from api.settings import Settings

log = logging.getLogger(__name__)

# What the classifiers' own predict() uses; a model logged without a threshold of its own means this.
DEFAULT_DECISION_THRESHOLD = 0.5


class ModelCheckFailed(Exception):
    """The model loaded but does not behave, or does not say how to read it: it must not serve."""


@dataclass(frozen=True)
class ServedModel:
    registry: RegistryVersion
    predictor: Predictor
    fallback_reason: str | None  # why the generic path serves; None when the compiled one does
    requests: RequestModels
    labels: tuple[Label, Label]  # (negative, positive), each in the target's own JSON type
    threshold: float  # the positive label when P(positive) > threshold
    # The logged contract and training distributions (drift monitoring reads them).
    feature_metadata: dict[str, Any]
    loaded_at: datetime
    max_parity_error: float | None  # the load-time check's finding; None when nothing was compiled

    @property
    def uses_fast_path(self) -> bool:
        return self.fallback_reason is None


def load_registered(settings: Settings, registered: RegistryVersion) -> ServedModel:
    with downloaded(settings, registered) as path:
        return build(path, registered, settings, require_digests=True)


def load_local(settings: Settings) -> ServedModel:
    """MODEL_URI, served without following an alias."""
    with local_model(settings) as (path, registered):
        # A directory baked into an image has no registry tags: its expected answers still are checked.
        return build(path, registered, settings, require_digests=False)


def decision_rule(metadata: dict[str, Any]) -> tuple[tuple[Label, Label], float]:
    """(negative, positive) labels and the decision threshold. The probabilities are P(positive_label), so
    the positive label is named by `positive_label`, never by its place in `labels`. Labels keep their
    JSON type (text, a whole number, a boolean): the answers carry them as the training data had them."""
    labels, positive = metadata.get("labels"), metadata.get("positive_label")
    if (
        not isinstance(labels, list)
        or len(labels) != 2
        or labels[0] == labels[1]
        or type(labels[0]) is not type(labels[1])
        or not isinstance(labels[0], str | int)  # bool is an int
    ):
        raise ModelCheckFailed(
            f"metadata['labels'] must hold two different labels of one type, not {labels!r}"
        )
    if type(positive) is not type(labels[0]) or positive not in labels:
        raise ModelCheckFailed(f"the positive label {positive!r} is not one of the labels {labels}")
    (negative,) = [label for label in labels if label != positive]
    threshold = metadata.get("decision_threshold", DEFAULT_DECISION_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise ModelCheckFailed(f"the decision threshold {threshold!r} is not a number in (0, 1)")
    return (negative, positive), float(threshold)


def positive_class_index(classes: Sequence[Any], positive_class: Any, positive_label: Label) -> int:
    """Which predict_proba column is the positive label's. The pipeline says which of its classes means
    the positive label (`positive_class`: this project's pipelines are fitted on 1 = positive, 0 = not);
    a pipeline logged without it is taken to be fitted on the label values themselves."""
    classes = list(classes)
    wanted = positive_label if positive_class is None else positive_class
    matches = [index for index, value in enumerate(classes) if _same_class(value, wanted)]
    if len(matches) == 1:
        return matches[0]
    raise ModelCheckFailed(
        f"the positive class {wanted!r} is not exactly one of the pipeline's classes {classes}"
    )


def _same_class(value: Any, wanted: Any) -> bool:
    """Equal, and both booleans or neither: True == 1 in Python, but a boolean label is not the class 1."""
    return isinstance(value, bool | np.bool_) == isinstance(wanted, bool) and bool(value == wanted)


def build(path: Path, registered: RegistryVersion, settings: Settings, require_digests: bool) -> ServedModel:
    """Read the contract, build the request schema, and load the predictor from the serving artifact,
    checked against its digests (`require_digests`: a registry version must have them) and its expected
    answers. Without that artifact, the pickled pipeline only when ALLOW_PICKLE_MODELS=true."""
    from mlflow.models import Model

    logged = Model.load(str(path))  # MLmodel is YAML: data, read without running anything
    metadata = (logged.metadata or {}).get("feature_metadata")
    if not metadata:
        raise ModelCheckFailed("the model was logged without metadata['feature_metadata']")
    labels, threshold = decision_rule(metadata)
    requests = build_request_models(
        logged.signature, metadata, settings.max_batch_size, settings.max_validation_errors
    )
    serving = path / SERVING_DIR
    max_error: float | None
    fallback_reason: str | None
    if serving.is_dir():
        predictor, probe_rows, max_error = _from_artifact(
            serving, registered, requests, settings, require_digests
        )
        fallback_reason = None
    elif settings.allow_pickle_models:
        predictor, probe_rows, max_error, fallback_reason = _from_pickle(
            path, metadata, requests, labels, settings
        )
    else:
        raise ModelCheckFailed(
            f"the model has no {SERVING_DIR}/ artifact (registered before it existed, or a pipeline shape the "
            "compiler cannot export); serving it means unpickling it: set ALLOW_PICKLE_MODELS=true only if "
            "every registry writer is trusted, or re-register it (`make migrate-serving`)"
        )
    log.info(
        "model %s v%s: %s predictor, verified on %d rows (max error %s); %s",
        registered.name,
        registered.version,
        predictor.kind,
        probe_rows,
        max_error,
        native_threads(),  # the model's libraries are loaded now: their thread pools are the ones it uses
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


def _from_artifact(
    serving: Path,
    registered: RegistryVersion,
    requests: RequestModels,
    settings: Settings,
    require_digests: bool,
) -> tuple[Predictor, int, float]:
    tag = registered.tags.get(DIGEST_TAG)
    try:
        digests = parse_digests(tag) if (require_digests or tag) else None
        served = load_serving(serving, digests, requests.columns, settings.parity_tolerance)
    except ArtifactRefused as error:
        raise ModelCheckFailed(f"serving artifact refused: {error}") from None
    return served.predictor, served.probe_rows, served.max_error


def _from_pickle(
    path: Path,
    metadata: dict[str, Any],
    requests: RequestModels,
    labels: tuple[Label, Label],
    settings: Settings,
) -> tuple[Predictor, int, float | None, str | None]:
    """The pickled pipeline (ALLOW_PICKLE_MODELS=true): compiled when its shape allows and it matches, else
    served as it is through pandas."""
    import mlflow.sklearn

    log.warning("model without a serving artifact: unpickling it (ALLOW_PICKLE_MODELS=true)")
    pipeline = mlflow.sklearn.load_model(str(path))
    _single_threaded(pipeline)
    columns = requests.columns
    known = {
        name: set(metadata["categorical"].get(name, {}).get("categories", [])) for name in columns.categorical
    }
    positive_index = positive_class_index(pipeline.classes_, metadata.get("positive_class"), labels[1])
    generic = GenericPredictor(pipeline, columns, known, positive_index)
    probe = _example_rows(path) + synthetic_rows(metadata, columns, settings.verify_rows)
    expected, _ = generic.predict_rows(probe)
    if not np.isfinite(expected).all():
        raise ModelCheckFailed("the pipeline returns non-finite probabilities on its input example or probes")
    try:
        fast = compile_predictor(pipeline, columns, positive_index)
        max_error = verify_parity(fast, probe, expected)
        if not max_error <= settings.parity_tolerance:
            raise UnsupportedPipeline(
                f"fast path differs from the pipeline by {max_error:.3g} on {len(probe)} rows"
            )
        return fast, len(probe), max_error, None
    except UnsupportedPipeline as error:
        reason = str(error)
    except Exception as error:  # a shape the compiler misreads must cost speed, never the model
        reason = f"the compiler failed: {type(error).__name__}: {error}"
    log.warning("serving the generic pandas path (%s)", reason)
    return generic, len(probe), None, reason


def _single_threaded(model: Any) -> None:
    """A loaded model forgets n_jobs; with every core per call, small requests get latency spikes. A
    calibrated model's pipelines are inside its calibrated classifiers."""
    inner = [calibrated.estimator for calibrated in getattr(model, "calibrated_classifiers_", [])]
    for pipeline in inner or [model]:
        _single_threaded_pipeline(pipeline)


def _single_threaded_pipeline(pipeline: Any) -> None:
    for _, step in getattr(pipeline, "steps", []):
        if "n_jobs" in step.get_params():
            step.set_params(n_jobs=1)
        if hasattr(step, "get_booster"):
            step.get_booster().set_param({"nthread": 1})


def _example_rows(path: Path) -> list[dict[str, Any]]:
    """The logged input example, read as the JSON MLflow wrote (pandas "split" orient)."""
    example = path / "input_example.json"
    if not example.is_file():
        return []
    data = json.loads(example.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list):
        return []
    return [
        {key: _plain(value) for key, value in zip(data["columns"], row, strict=True)}
        for row in data.get("data", [])
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
