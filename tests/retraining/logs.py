"""Synthetic inference and feedback logs, in the service's own layout and file format
(api/inference_log.py writes them through the same LogStore)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from api.log_store import LogStore


def write(table: pa.Table, root: Path, model_name: str, version: str, at: datetime) -> None:
    """`table` as one new file of the log at `root`, in the partition of `at`."""
    relative = (
        f"model_name={model_name}/model_version={version}/date={at.date().isoformat()}/"
        f"{at.hour:02d}-{uuid.uuid4()}.parquet"
    )
    LogStore.of(str(root)).write(table, relative)


def write_inference_log(
    root: Path,
    model_name: str,
    version: str,
    rows: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    probability: np.ndarray,
    labels: tuple[str, str],
    at: datetime,
) -> list[str]:
    """`rows` as one file of what the service scored at `at`; their request ids."""
    ids = [f"req-{uuid.uuid4().hex}" for _ in range(len(rows))]
    columns = {
        "request_id": pa.array(ids, pa.string()),
        "time": pa.array([at] * len(rows), pa.timestamp("us", tz="UTC")),
    }
    for name in numeric:
        columns[name] = pa.array(rows[name].astype("float64").tolist(), pa.float64())
    for name in categorical:
        values = rows[name].astype(object).where(rows[name].notna(), None).tolist()
        columns[name] = pa.array(values, pa.string())
    columns["probability"] = pa.array(probability, pa.float64())
    columns["label"] = pa.array([labels[int(p > 0.5)] for p in probability], pa.string())
    write(pa.table(columns), root, model_name, version, at)
    return ids


def write_feedback_log(
    root: Path, model_name: str, version: str, ids: list[str], labels: list[str], at: datetime
) -> None:
    table = pa.table(
        {
            "request_id": pa.array(ids, pa.string()),
            "time": pa.array([at] * len(ids), pa.timestamp("us", tz="UTC")),
            "label": pa.array(labels, pa.string()),
            "result": pa.array(["matched"] * len(ids), pa.string()),
        }
    )
    write(table, root, model_name, version, at)


def recently(hours: float = 1.0) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)
