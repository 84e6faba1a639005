"""Synthetic production logs for `make retrain`: rows of a data file, scored and labelled, written as the
service writes its inference and feedback logs (api/inference_log.py's schemas and Hive layout).

    python -m tests.retraining.synthetic --rows 5000 [--log-dir data/inference]   # the full-data timing

The rows are real rows of the Adult data (their true label is the feedback), so the retrained model
meets realistic data; each gets a request id that the data does not hold yet.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.params import Params, load_params
from stages.prepare import read_raw, resolve_source

MODEL_NAME = "adult-income"
START = datetime(2026, 11, 30, 9, tzinfo=UTC)


def _hive(root: Path, version: str, moment: datetime) -> Path:
    folder = (
        root / f"model_name={MODEL_NAME}" / f"model_version={version}" / f"date={moment.date().isoformat()}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{moment.hour:02d}-{uuid.uuid4()}.parquet"


def _times(count: int, start: datetime = START) -> pa.Array:
    micros = [int((start + timedelta(seconds=index)).timestamp() * 1e6) for index in range(count)]
    return pa.array(micros, type=pa.timestamp("us", tz="UTC"))


def write_logs(
    root: Path,
    rows: pd.DataFrame,
    params: Params,
    *,
    labels: list | None = None,
    ids: list[str] | None = None,
    feedback_ids: list[str] | None = None,
    version: str = "1",
    scored: bool = True,
    labelled_at: datetime = START + timedelta(hours=1),
) -> list[str]:
    """`rows` (prepared column names, the target among them) as one inference log file, and their labels
    (`labels`, default the rows' own) as one feedback log file under root/feedback, the service's
    default. `feedback_ids` sends labels for other ids than the scored ones (unknown ids); `scored=False`
    writes the feedback only, e.g. later labels (`labelled_at`) for rows scored before."""
    features = params.features
    ids = ids or [f"synthetic-{uuid.uuid4()}" for _ in range(len(rows))]
    label_type = pa.string() if isinstance(features.labels[0], str) else pa.int64()
    columns = {
        "request_id": pa.array(ids, pa.string()),
        "time": _times(len(rows)),
        **{name: pa.array(rows[name].astype("float64"), pa.float64()) for name in features.numeric},
        **{
            name: pa.array(rows[name].astype(object).where(rows[name].notna(), None), pa.string())
            for name in features.categorical
        },
        "probability": pa.array(np.full(len(rows), 0.5)),
        "label": pa.array([features.labels[0]] * len(rows), label_type),
    }
    if scored:
        pq.write_table(pa.table(columns), _hive(root, version, START))
    given = feedback_ids or ids
    truth = labels if labels is not None else rows[features.target].tolist()
    feedback = pa.table(
        {
            "request_id": pa.array(given, pa.string()),
            "time": _times(len(given), labelled_at),
            "label": pa.array(truth[: len(given)], label_type),
            "result": pa.array(["matched"] * len(given)),
        }
    )
    pq.write_table(feedback, _hive(root / "feedback", version, labelled_at))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--log-dir", type=Path, default=Path("data/inference"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = load_params()
    frame = read_raw(resolve_source(params.data.source, params.paths.raw), params.data.read)
    rows = frame.sample(n=args.rows, random_state=args.seed).reset_index(drop=True)
    write_logs(args.log_dir, rows, params)
    print(f"synthetic: {args.rows} scored and labelled rows in {args.log_dir}")


if __name__ == "__main__":
    main()
