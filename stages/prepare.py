"""prepare: read the raw source, normalise it, write a seeded, stratified train/val/test split."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from stages.errors import StageError, run
from stages.params import load_params
from stages.workspace import output, workspace

PACKAGE_PREFIX = "package:"


def resolve_source(source: str) -> Path:
    """`package:<dist>/<file>` names a file inside an installed wheel; anything else is repo-relative."""
    if source.startswith(PACKAGE_PREFIX):
        inner = source.removeprefix(PACKAGE_PREFIX)
        distribution = inner.split("/", 1)[0]
        return Path(str(importlib.metadata.distribution(distribution).locate_file(inner)))
    return workspace() / source


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name.strip()).strip("_").lower()


def read_raw(file: Path, index_column: int | None, missing_markers: list[str]) -> pd.DataFrame:
    if file.suffix == ".parquet":
        frame = pd.read_parquet(file)
    else:
        frame = pd.read_csv(file, index_col=index_column, skipinitialspace=True, na_values=missing_markers)
    frame = frame.rename(columns=snake_case)
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            values = frame[column].astype("string").str.strip()
            frame[column] = values.mask(values.isin(missing_markers) | (values == ""))
    return frame.reset_index(drop=True)


def split(
    frame: pd.DataFrame, target: str, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Stratified split of the distinct rows; identical rows always land in the same split, so the
    evaluation never scores a row the model was trained on."""
    row_key = pd.util.hash_pandas_object(frame, index=False)
    distinct = frame[~row_key.duplicated()]
    rest, test = train_test_split(
        distinct, test_size=test_fraction, stratify=distinct[target], random_state=seed
    )
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=rest[target], random_state=seed
    )
    split_of_key = {}
    for name, part in {"train": train, "val": val, "test": test}.items():
        split_of_key.update(dict.fromkeys(row_key[part.index], name))
    assigned = row_key.map(split_of_key)
    return {name: frame[assigned == name] for name in ("train", "val", "test")}


def main() -> None:
    params = load_params()
    data, prepare = params.data, params.prepare
    source = resolve_source(data.source)
    actual = sha256_of(source)
    if actual != data.sha256:
        raise StageError(
            f"{source} has sha256 {actual}, params.yaml data.sha256 expects {data.sha256}.\n"
            "If the new file is intended, put its sha256 in params.yaml."
        )

    try:
        frame = read_raw(source, data.index_column, data.missing_markers)
    except (OSError, ValueError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise StageError(f"cannot read {source}: {error}") from None
    frame = frame.drop(columns=[snake_case(name) for name in data.drop_columns], errors="ignore")
    target = params.features.target
    if target not in frame.columns or frame.empty:
        raise StageError(
            f"{source} has {len(frame)} rows and columns {list(frame.columns)}; it needs rows and "
            f"the target column '{target}' (params.yaml features.target)"
        )
    if data.sample_rows:
        frame, _ = train_test_split(
            frame, train_size=data.sample_rows, stratify=frame[target], random_state=prepare.seed
        )

    out = output(params.paths.prepared)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in split(frame, target, prepare.val_fraction, prepare.test_fraction, prepare.seed).items():
        part.reset_index(drop=True).to_parquet(out / f"{name}.parquet", index=False)
        print(f"prepare: {name}: {len(part)} rows")


if __name__ == "__main__":
    run(main, "prepare")
