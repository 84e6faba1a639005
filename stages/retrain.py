"""retrain: production's labelled feedback becomes new rows, a new data version, and a `dvc repro`.

    make retrain        # INFERENCE_LOG_DIR (data/inference), FEEDBACK_LOG_DIR (INFERENCE_LOG_DIR/feedback)
    python -m stages.retrain decide REPORT [--by-hand]   # retrain.yml: is a retrain due? (key=value lines)

1. The feedback log is joined to the inference log on the request id: only labelled predictions become
   rows. A prediction keeps its first label, as the service does (a later one is a duplicate).
2. The new rows are checked on their own, before anything is written: known labels, unique request ids,
   at least `retrain.min_rows`, at most `retrain.max_unknown_fraction` of feedback without a logged
   prediction, and a label balance within `validate.positive_fraction`. A bad batch stops here with a
   report of what was observed against what is allowed; nothing is written or registered.
3. They are appended to the data in the raw file's own form (its column names, missing marker, label
   values), with three lineage columns that `data.drop_columns` keeps from the model, as a new
   content-addressed file under paths.raw that DVC tracks; `data.source` and `data.sha256` point at it
   (through the params writer). Rows whose request id the data already holds are not added twice.
4. `dvc repro` runs the pipeline: the contract validates the grown data like any data, and register
   registers and at most stages the model. `production` is never moved here (only `make promote` does).
5. The registered version gets lineage tags (the parent data's sha256, the rows added), and
   paths.retrain (DVC metrics: counts and balance) and paths.retrain_batch (the date range) are written.

prepare's split is a function of each row, so the rows already in the test split stay there.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from api.log_store import PARTITIONS
from stages.errors import StageError, run
from stages.logs import log_dataset, log_locations
from stages.params import Label, Params, load_params
from stages.params_writer import update_params
from stages.prepare import column_name, read_raw, resolve_source, sha256_of
from stages.workspace import output, workspace

# The raw file's lineage columns: which request, scored by which model version, when. Listed in
# data.drop_columns, so the contract accepts them and the model never sees them.
REQUEST_ID, MODEL_VERSION, SCORED_AT = "request_id", "model_version", "scored_at"
LINEAGE_COLUMNS = (REQUEST_ID, MODEL_VERSION, SCORED_AT)
# A retrain's file is named <stem>-<first 12 hex digits of its sha256><suffix>.
HASH_DIGITS = 12
_HASHED_STEM = re.compile(rf"-[0-9a-f]{{{HASH_DIGITS}}}$")
TEXT_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")


@dataclass(frozen=True)
class Logs:
    inference: str  # a directory or an s3:// URI (api/log_store.py), as the service writes them
    feedback: str

    @staticmethod
    def from_environment() -> Logs:
        """The service's own variables and defaults (api/settings.py)."""
        return Logs(*log_locations(os.environ.get("INFERENCE_LOG_DIR") or "data/inference", os.environ))


@dataclass(frozen=True)
class Batch:
    """The new rows (features, label and lineage, by the pipeline's column names) and what was seen."""

    rows: pd.DataFrame
    feedback_ids: int
    unknown_ids: int
    already_in_data: int


# ---------------------------------------------------------------------------------------- reading logs
def arrow_label_type(labels: list[Label]) -> pa.DataType:
    """The logs' label type, as api/inference_log.py writes it for these labels."""
    if isinstance(labels[0], bool):
        return pa.bool_()
    return pa.int64() if isinstance(labels[0], int) else pa.string()


def read_log(location: str, columns: list[tuple[str, pa.DataType]]) -> pd.DataFrame:
    """Every complete file of a log, on disk or S3, as one frame with `columns` and the partition columns
    (a file that lacks a column, written by a model version with other features, gives nulls)."""
    dataset = log_dataset(location, pa.schema(columns))
    if dataset is None:
        return pa.schema([*columns, *PARTITIONS]).empty_table().to_pandas()
    return dataset.to_table().to_pandas()


def read_logs(logs: Logs, params: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    features = params.features
    label_type = arrow_label_type(features.labels)
    feature_columns = [(name, pa.float64()) for name in features.numeric] + [
        (name, pa.string()) for name in features.categorical
    ]
    time = ("time", pa.timestamp("us", tz="UTC"))
    predictions = read_log(logs.inference, [("request_id", pa.string()), time, *feature_columns])
    feedback = read_log(logs.feedback, [("request_id", pa.string()), time, ("label", label_type)])
    return predictions, feedback


# ---------------------------------------------------------------------------------------- the checks
def existing_ids(params: Params) -> set[str]:
    """The request ids the data already holds (a retrain's lineage column), so none is added twice."""
    source = resolve_source(params.data.source, params.paths.raw)
    frame = read_raw(source, params.data.read)
    if REQUEST_ID not in frame.columns:
        return set()
    return set(frame[REQUEST_ID].dropna().astype(str))


def join(predictions: pd.DataFrame, feedback: pd.DataFrame, params: Params) -> Batch:
    """Labelled predictions, checked on their own; a StageError lists every check that failed."""
    retrain, band = params.retrain, params.validation.positive_fraction
    labels, positive = params.features.labels, params.features.positive_label
    # The first label per id wins, as in the service; the sort is stable, so equal times keep log order.
    first = feedback.sort_values("time", kind="stable").drop_duplicates("request_id", keep="first")
    problems: list[str] = []
    unknown_labels = sorted({str(label) for label in first["label"] if label not in labels})
    if unknown_labels:
        problems.append(f"labels {unknown_labels} are not the model's labels {labels}")
    scored_twice = predictions["request_id"].duplicated(keep=False)
    ambiguous = sorted(set(predictions.loc[scored_twice, "request_id"]) & set(first["request_id"]))
    if ambiguous:
        problems.append(
            f"request ids must be unique: {len(ambiguous)} labelled ids name more than one logged "
            f"prediction (allowed: 0), e.g. {ambiguous[:3]}"
        )
    joined = first.drop(columns=["model_name", MODEL_VERSION, "date"]).merge(
        predictions.drop(columns=["date"]).rename(columns={"time": SCORED_AT}), on="request_id", how="inner"
    )
    unknown = len(first) - first["request_id"].isin(predictions["request_id"]).sum()
    unknown_fraction = unknown / len(first) if len(first) else 0.0
    if unknown_fraction > retrain.max_unknown_fraction:
        problems.append(
            f"{unknown} of {len(first)} labelled ids ({unknown_fraction:.1%}) have no logged prediction "
            f"(allowed: {retrain.max_unknown_fraction:.1%}, retrain.max_unknown_fraction)"
        )
    seen = existing_ids(params)
    fresh = joined[~joined["request_id"].isin(seen)].drop_duplicates("request_id")
    if len(fresh) < retrain.min_rows:
        problems.append(
            f"{len(fresh)} new labelled rows (allowed: at least {retrain.min_rows}, retrain.min_rows; "
            f"{len(first)} labelled ids, {unknown} without a prediction, "
            f"{len(joined) - len(fresh)} already in the data)"
        )
    if len(fresh):
        fraction = float((fresh["label"] == positive).mean())
        if not band.min <= fraction <= band.max:
            problems.append(
                f"{fraction:.1%} of the new rows are {positive!r} (allowed: {band.min:.0%} to "
                f"{band.max:.0%}, validate.positive_fraction)"
            )
    if problems:
        raise StageError(
            "the new rows are refused; nothing was written or registered:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )
    ordered = fresh.sort_values([SCORED_AT, "request_id"], kind="stable").reset_index(drop=True)
    return Batch(ordered, len(first), int(unknown), len(joined) - len(fresh))


# ---------------------------------------------------------------------------------------- the raw file
def raw_value(value: object, column: str, params: Params, missing: str) -> str:
    """A value as the raw file writes it: whole numbers of an int64 feature without `.0` (the logs hold
    every number as float), missing values as the file's first missing marker."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA or value is pd.NaT:
        return missing
    numeric = params.features.numeric.get(column)
    if numeric is not None and numeric.dtype == "int64" and float(value).is_integer():  # type: ignore[arg-type]
        return str(int(value))  # type: ignore[call-overload]
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def read_text(file: Path) -> str:
    data = file.read_bytes()
    return (gzip.decompress(data) if file.name.endswith(".gz") else data).decode("utf-8")


def suffix_of(file: Path) -> str:
    for suffix in sorted(TEXT_SUFFIXES, key=len, reverse=True):
        if file.name.endswith(suffix):
            return suffix
    raise StageError(
        f"make retrain appends to {', '.join(TEXT_SUFFIXES)} files; data.source {file.name} is not one"
    )


def grown_file(source: Path, batch: Batch, params: Params) -> tuple[bytes, str, dict[str, object]]:
    """The source's records, then the new ones in its form. Returns the file's bytes, its suffix, and the
    params changes it needs (new lineage columns in data.drop_columns, and read.names without a header)."""
    read, features = params.data.read, params.features
    suffix = suffix_of(source)
    records = [
        record for record in csv.reader(io.StringIO(read_text(source)), delimiter=read.delimiter) if record
    ]
    if read.header:
        header, body = records[0], records[1:]
        raw_names = [name.strip() for name in header]
    else:
        header, body = [], records
        width = max(len(record) for record in body)
        raw_names = list(read.names) or [f"column_{position + 1}" for position in range(width)]
    names = [column_name(name) for name in raw_names]
    added = [column for column in LINEAGE_COLUMNS if column not in names]
    raw_names, names = raw_names + added, names + added
    if read.header:
        header = header + added
    width = len(names)
    missing = read.missing_markers[0] if read.missing_markers else ""
    index = read.index_column
    rows = [record + [""] * (width - len(record)) for record in body]
    new = batch.rows.rename(columns={"label": features.target})
    for position, row in enumerate(new.to_dict("records")):
        fields = []
        for column_position, name in enumerate(names):
            if column_position == index:
                fields.append(str(len(body) + position))  # the next row number, for an index column
            elif name in row:
                fields.append(raw_value(row[name], name, params, missing))
            else:
                fields.append(missing)  # a raw column the pipeline drops
        rows.append(fields)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=read.delimiter, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    text = out.getvalue().encode("utf-8")
    data = gzip.compress(text, mtime=0) if suffix.endswith(".gz") else text  # mtime=0: same rows, same bytes
    changes: dict[str, object] = {}
    dropped = list(params.data.drop_columns)
    missing_lineage = [
        column for column in LINEAGE_COLUMNS if column not in {column_name(d) for d in dropped}
    ]
    if missing_lineage:
        changes["data.drop_columns"] = dropped + missing_lineage
    if not read.header and added:
        changes["data.read.names"] = raw_names
    return data, suffix, changes


def stem_of(source: Path, suffix: str) -> str:
    return _HASHED_STEM.sub("", source.name.removesuffix(suffix)) or "data"


def dvc(*args: str) -> None:
    result = subprocess.run(["dvc", *args], cwd=workspace())
    if result.returncode != 0:
        raise StageError(f"`dvc {' '.join(args)}` exited {result.returncode} (its output is above)")


def write_version(source: Path, batch: Batch, params: Params) -> tuple[Path, str]:
    """The grown file under paths.raw, DVC-tracked; params.yaml pointed at it. The previous retrain's
    file (a DVC-tracked one under paths.raw) is removed from the workspace: DVC's cache and the remote
    keep it, and its .dvc pointer stays in git history."""
    data, suffix, changes = grown_file(source, batch, params)
    digest = hashlib.sha256(data).hexdigest()
    relative = params.paths.raw / f"{stem_of(source, suffix)}-{digest[:HASH_DIGITS]}{suffix}"
    target = workspace() / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    dvc("add", "--quiet", str(relative))
    previous = source.with_name(source.name + ".dvc")
    if source != target.resolve() and previous.is_file():
        dvc("remove", "--outs", str(previous.relative_to(workspace())))
    update_params({"data.source": relative.as_posix(), "data.sha256": digest, **changes})
    return relative, digest


# ---------------------------------------------------------------------------------------- reports, tags
def reports(batch: Batch, params: Params, parent: str, relative: Path, digest: str) -> dict[str, float]:
    rows = batch.rows
    positive = int((rows["label"] == params.features.positive_label).sum())
    metrics: dict[str, float] = {
        "rows_added": len(rows),
        "positive": positive,
        "negative": len(rows) - positive,
        "positive_fraction": round(positive / len(rows), 6),
        "feedback_ids": batch.feedback_ids,
        "unknown_ids": batch.unknown_ids,
        "already_in_data": batch.already_in_data,
    }
    output(params.paths.retrain).write_text(json.dumps(metrics, indent=2) + "\n")
    plain = {
        "scored": {"first": rows[SCORED_AT].min().isoformat(), "last": rows[SCORED_AT].max().isoformat()},
        "labelled": {"first": rows["time"].min().isoformat(), "last": rows["time"].max().isoformat()},
        "model_versions": {
            str(k): int(v) for k, v in rows[MODEL_VERSION].value_counts().sort_index().items()
        },
        "parent": {"source": params.data.source, "sha256": parent},
        "data": {"source": relative.as_posix(), "sha256": digest},
    }
    output(params.paths.retrain_batch).write_text(json.dumps(plain, indent=2) + "\n")
    return metrics


def production_version() -> str | None:
    from stages.registry import open_registry
    from stages.tracking import configure

    configure()
    version = open_registry().production()
    return None if version is None else str(version.version)


def registered_version(params: Params) -> str:
    report = json.loads((workspace() / params.paths.registry_report).read_text())
    return f"{report['model_name']} v{report['version']}"


def decide(report_file: Path, by_hand: bool) -> dict[str, str]:
    """Whether retrain.yml retrains: the drift report (`make drift-report`'s JSON, whose `drift` and
    `quality_drop` booleans are its verdict) says the world moved or online quality fell, or a person
    asked. The answer is `key=value` lines for $GITHUB_OUTPUT, with the reason a reviewer reads."""
    try:
        report = json.loads(report_file.read_text())
    except (OSError, ValueError) as error:
        raise StageError(f"cannot read the drift report {report_file}: {error}") from None
    verdict = {name: report.get(name) for name in ("drift", "quality_drop")}
    wrong = [name for name, value in verdict.items() if not isinstance(value, bool)]
    if wrong:
        raise StageError(f"{report_file}: {', '.join(wrong)} must be true or false, not {verdict}")
    reasons = [name for name, value in verdict.items() if value] + (["asked for by hand"] if by_hand else [])
    return {
        "retrain": str(bool(reasons)).lower(),
        "reason": ", ".join(reasons) or "no drift, no quality drop",
    }


def score_production() -> dict[str, object]:
    """The retrained model against production on the NEW test split, for the retrain PR's reviewer: the
    retrain registers into the runner's throwaway registry, so retrain.yml asks the shared one (read-only)
    here. Production is scored as register scores its rivals, through its verified serving artifact."""
    from stages.register import incumbents  # the same scoring as register's decision
    from stages.registry import open_registry
    from stages.tracking import configure

    configure()  # the project's MLflow retries and timeouts, as every stage that asks the registry
    params = load_params()
    primary = params.quality.primary_metric
    test = pd.read_parquet(workspace() / params.paths.prepared / "test.parquet")
    retrained = json.loads((workspace() / params.paths.metrics).read_text())[primary]
    registry = open_registry()
    production = [
        rival for rival in incumbents(registry, test, primary) if rival.alias == registry.aliases.production
    ]
    found = production[0] if production else None
    return {
        "metric": primary,
        "test_rows": len(test),
        "retrained": retrained,
        "production_version": None if found is None else found.version,
        "production": None if found is None else found.score,
        # Only the kind of failure: its text may hold a URL with credentials, and this goes into the PR.
        "error": "no production version" if found is None else found.error.split(":", 1)[0],
    }


def retrain() -> None:
    params = load_params()
    if params.data.sample_rows:
        raise StageError(
            "data.sample_rows is set: a sample is drawn anew from the grown data, so the new rows may be "
            "left out and test rows would move. Unset it to retrain."
        )
    logs = Logs.from_environment()
    predictions, feedback = read_logs(logs, params)
    print(
        f"retrain: {len(predictions)} logged predictions in {logs.inference}, {len(feedback)} feedback items in {logs.feedback}"
    )
    batch = join(predictions, feedback, params)
    source = resolve_source(params.data.source, params.paths.raw)
    parent = sha256_of(source)
    if parent != params.data.sha256:
        raise StageError(
            f"{source} has sha256 {parent}, params.yaml data.sha256 expects {params.data.sha256}"
        )
    production_before = production_version()
    relative, digest = write_version(source, batch, params)
    metrics = reports(batch, params, parent, relative, digest)
    print(
        f"retrain: {metrics['rows_added']} new rows ({metrics['positive_fraction']:.1%} "
        f"{params.features.positive_label!r}) -> {relative} (sha256 {digest[:12]}); dvc repro"
    )
    result = subprocess.run(["dvc", "repro"], cwd=workspace())
    if result.returncode != 0:
        raise StageError(
            f"dvc repro exited {result.returncode}: nothing was registered. The new data version is in "
            f"{relative} and params.yaml; `git checkout params.yaml` and `dvc remove {relative}.dvc` undo it"
        )
    registered = registered_version(params)  # register tagged it with its lineage
    production_after = production_version()
    if production_after != production_before:  # register cannot move it; this says so if it ever did
        raise StageError(
            f"production moved from v{production_before} to v{production_after} during a retrain"
        )
    unchanged = f"v{production_before}" if production_before else "unset"
    print(f"retrain: registered {registered} with its lineage; production stays {unchanged}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.retrain", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    decision = commands.add_parser("decide", help="is a retrain due, by the drift report or by hand?")
    decision.add_argument("report", type=Path)
    decision.add_argument(
        "--by-hand", action="store_true", help="a person asked: retrain whatever the report says"
    )
    commands.add_parser(
        "score-production",
        help="the retrained model and production on the new test split (MLFLOW_TRACKING_URI's registry), "
        "as JSON, printed and written to paths.retrain_production",
    )
    args = parser.parse_args(argv)
    if args.command == "score-production":
        scored = json.dumps(score_production(), indent=2) + "\n"
        output(load_params().paths.retrain_production).write_text(scored)  # the PR carries it
        sys.stdout.write(scored)
        return
    if args.command == "decide":
        for key, value in decide(args.report, args.by_hand).items():
            print(f"{key}={value}")
        return
    retrain()


if __name__ == "__main__":
    run(main, "retrain")
