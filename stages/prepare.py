"""prepare: read the raw source, normalise it, write a seeded train/val/test split that is stable as data grows."""

from __future__ import annotations

import hashlib
import importlib.metadata
import keyword
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from stages.errors import StageError, run
from stages.params import Read, load_params
from stages.workspace import output, workspace

PACKAGE_PREFIX = "package:"


def resolve_source(source: str, raw_folder: Path) -> Path:
    """`package:<dist>/<file>` names a file inside an installed wheel; anything else is a file under
    paths.raw, the folder prepare depends on in dvc.yaml (so that editing the file re-runs it)."""
    if source.startswith(PACKAGE_PREFIX):
        inner = source.removeprefix(PACKAGE_PREFIX)
        distribution = inner.split("/", 1)[0]
        try:
            file = Path(str(importlib.metadata.distribution(distribution).locate_file(inner)))
        except importlib.metadata.PackageNotFoundError:
            raise StageError(f"data.source {source}: no installed package {distribution!r}") from None
        if not file.is_file():
            raise StageError(f"data.source {source}: the package {distribution!r} has no {inner}")
        return file
    file = (workspace() / source).resolve()
    folder = (workspace() / raw_folder).resolve()
    if not file.is_relative_to(folder):
        raise StageError(
            f"data.source {source} is outside {raw_folder}/, which prepare depends on: move it there "
            f"(`mv {source} {raw_folder}/`) and point data.source at it, so that editing it re-runs prepare"
        )
    if not file.is_file():
        raise StageError(
            f"data.source {source} does not exist. Put your file there, or `dvc pull` it if it is tracked "
            "by DVC, or run `make contract SOURCE=...` to describe another file"
        )
    return file


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def column_name(raw: object) -> str:
    """A raw column name as a model input's name: snake_case, a Python identifier, not a keyword
    (`class` -> `class_`), not starting with a digit (`1st` -> `column_1st`). The request schema and
    params.yaml both need such names."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", str(raw).strip()).strip("_").lower() or "column"
    if name[0].isdigit():
        name = f"column_{name}"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        name = f"{name}_"
    return name


def column_names(raw: list[object]) -> list[str]:
    names = [column_name(name) for name in raw]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        sources = {name: [str(r) for r, n in zip(raw, names, strict=True) if n == name] for name in clashes}
        raise StageError(f"columns {sources} become the same name; rename them in the file")
    return names


def read_table(file: Path, read: Read) -> pd.DataFrame:
    """The file as written, with only `read.missing_markers` (and empty fields) as missing values."""
    if file.name.endswith(".parquet"):
        return pd.read_parquet(file)
    frame = pd.read_csv(
        file,
        sep=read.delimiter,
        header=0 if read.header else None,
        names=read.names or None,
        index_col=read.index_column,
        skipinitialspace=True,
        na_values=[*read.missing_markers, ""],
        keep_default_na=False,  # "NA", "n/a", "null" ... are values unless listed as markers
    )
    if not read.header and not read.names:
        frame.columns = [f"column_{position + 1}" for position in range(frame.shape[1])]
    return frame


def normalise(frame: pd.DataFrame, read: Read) -> pd.DataFrame:
    """Column names made identifiers, strings stripped, markers made missing."""
    frame = frame.copy()
    frame.columns = column_names(list(frame.columns))
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            values = frame[column].astype("string").str.strip()
            frame[column] = values.mask(values.isin(read.missing_markers) | (values == ""))
    return frame.reset_index(drop=True)


def read_raw(file: Path, read: Read) -> pd.DataFrame:
    return normalise(read_table(file, read), read)


# What stands for a missing value in a row's key: no value of a column can be it.
_MISSING_KEY = "\x00"


def _canonical(value: object) -> str:
    """One text per value, whatever dtype the column was read with: 42, 42.0 and np.int64(42) are all
    "42", so a column that gains a missing value (and so becomes float) keeps its rows' keys."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return _MISSING_KEY
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def split_positions(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """Each row's place in [0, 1): the first 8 bytes of sha256(seed, the row's column names and values).
    It depends on that row alone, so appending rows moves none, and identical rows share it."""
    columns = sorted(frame.columns)
    keys = pd.Series(f"{seed}", index=frame.index, dtype=object)
    for column in columns:
        keys = keys + f"\x1e{column}\x1f" + frame[column].map(_canonical).astype(object)
    digests = [hashlib.sha256(key.encode()).digest()[:8] for key in keys]
    return np.array([int.from_bytes(digest, "big") for digest in digests], dtype=np.float64) / 2.0**64


def split(
    frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """test below test_fraction, validation up to test_fraction + val_fraction, train above, by each row's
    seeded position (split_positions). A row's split is a function of the row: it stays where it was
    when rows are appended, and identical rows always land together, so the evaluation never scores a
    row the model was trained on. Not stratified: each split's label balance is the data's up to
    sampling noise (about ±0.5 points on Adult's 7,300 test rows)."""
    position = split_positions(frame, seed)
    assigned = np.where(
        position < test_fraction, "test", np.where(position < test_fraction + val_fraction, "val", "train")
    )
    return {name: frame[assigned == name] for name in ("train", "val", "test")}


def main() -> None:
    params = load_params()
    data, prepare = params.data, params.prepare
    source = resolve_source(data.source, params.paths.raw)
    actual = sha256_of(source)
    if actual != data.sha256:
        raise StageError(
            f"{source} has sha256 {actual}, params.yaml data.sha256 expects {data.sha256}.\n"
            "If the new file is intended, put its sha256 in params.yaml."
        )

    try:
        frame = read_raw(source, data.read)
    except (OSError, ValueError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise StageError(f"cannot read {source}: {error}") from None
    target = params.features.target
    if target not in frame.columns or frame.empty:
        raise StageError(
            f"{source} has {len(frame)} rows and columns {list(frame.columns)}; it needs rows and "
            f"the target column '{target}' (params.yaml features.target)"
        )
    dropped = [column_name(name) for name in data.drop_columns]
    unknown = [name for name in dropped if name not in frame.columns]
    if unknown:
        raise StageError(
            f"data.drop_columns names {unknown}, which {source} does not have; its columns are "
            f"{list(frame.columns)}"
        )
    frame = frame.drop(columns=dropped)
    if data.sample_rows:
        frame, _ = train_test_split(
            frame, train_size=data.sample_rows, stratify=frame[target], random_state=prepare.seed
        )

    out = output(params.paths.prepared)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in split(frame, prepare.val_fraction, prepare.test_fraction, prepare.seed).items():
        part.reset_index(drop=True).to_parquet(out / f"{name}.parquet", index=False)
        print(f"prepare: {name}: {len(part)} rows")


if __name__ == "__main__":
    run(main, "prepare")
