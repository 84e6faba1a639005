"""The serving artifact of a trained pipeline (format: api/artifact.py): written beside each logged model
at training time, from the fitted pipeline in hand; read back by `register` to score a registered version
without unpickling anything from the registry."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from api.artifact import DIGEST_TAG, SERVING_DIR, encode_digests, load_serving, parse_digests, write_serving
from api.fast import UnsupportedPipeline, export_pipeline, synthetic_rows
from api.loading import decision_rule, positive_class_index
from api.predictor import Columns, GenericPredictor

# The probe: the input example plus this many synthetic rows over the whole contract.
PROBE_ROWS = 512
# What the served predictor may differ from the pipeline by (the service's default parity tolerance).
TOLERANCE = 1e-6


def model_columns(metadata: dict[str, Any]) -> Columns:
    return Columns(numeric=tuple(metadata["numeric"]), categorical=tuple(metadata["categorical"]))


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a client sends them: plain values, None for missing."""
    plain = frame.astype(object).where(frame.notna(), None)
    return [
        {key: value.item() if isinstance(value, np.generic) else value for key, value in row.items()}
        for row in plain.to_dict(orient="records")
    ]


def write_artifact(
    model: Any, example: pd.DataFrame, metadata: dict[str, Any], directory: Path
) -> dict[str, str]:
    """The fitted `model` exported to `directory`, with the probabilities it gives the probe rows; the
    files' digests. Raises UnsupportedPipeline for a shape the compiled predictor cannot replay."""
    columns = model_columns(metadata)
    (_, positive), _ = decision_rule(metadata)
    positive_index = positive_class_index(model.classes_, metadata.get("positive_class"), positive)
    exported = export_pipeline(model, columns, positive_index)
    known = {name: set(meta.get("categories", [])) for name, meta in metadata["categorical"].items()}
    rows = records(example) + synthetic_rows(metadata, columns, PROBE_ROWS)
    expected, _ = GenericPredictor(model, columns, known, positive_index).predict_rows(rows)
    return write_serving(directory, exported, rows, expected)


def log_serving_artifact(
    model_id: str, model: Any, example: pd.DataFrame, metadata: dict[str, Any]
) -> str | None:
    """The artifact logged into the logged model `model_id` (beside its MLmodel, under serving/), and its
    digests as the DIGEST_TAG value; None when this pipeline shape has none (it then serves only where
    ALLOW_PICKLE_MODELS=true)."""
    with tempfile.TemporaryDirectory(prefix="serving-") as workdir:
        directory = Path(workdir) / SERVING_DIR
        try:
            digests = write_artifact(model, example, metadata, directory)
        except UnsupportedPipeline as error:
            print(
                f"train: no serving artifact for this pipeline ({error}); it needs ALLOW_PICKLE_MODELS=true"
            )
            return None
        MlflowClient().log_model_artifacts(model_id, str(directory), SERVING_DIR)
    return encode_digests(digests)


def registered_scores(
    client: MlflowClient, name: str, version: str, frame: pd.DataFrame, columns: Columns
) -> np.ndarray:
    """P(positive) on `frame` from a registered version's serving artifact, verified against its digest
    tag: the version's pickle is never loaded. Raises when the version has no artifact or it is refused."""
    found = client.get_model_version(name, version)
    location = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="incumbent-") as workdir:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=workdir))
        if not (local / SERVING_DIR).is_dir():
            raise FileNotFoundError(
                f"{name} v{version} has no {SERVING_DIR}/ artifact (registered before it existed, or a "
                "pipeline shape without one): `make migrate-serving` adds it"
            )
        digests = parse_digests((found.tags or {}).get(DIGEST_TAG))
        served = load_serving(local / SERVING_DIR, digests, columns, TOLERANCE)
    rows = records(frame[list(columns.order)])
    batch = {column: [row[column] for row in rows] for column in columns.order}
    prepared, _ = served.predictor.prepare(batch)
    return served.predictor.score(prepared)
