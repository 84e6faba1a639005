"""The serving artifact: the compiled predictor as data, logged beside each model at training time.

`serving/` in the model's artifacts holds
- `predictor.json`: the predictor spec (api/fast/export.py), format `fast-mlops.predictor/1`: per numeric
  column its fill, mean and scale; per categorical column its one-hot positions; the classifier's weights
  (or a pointer to the booster) and an optional calibrator;
- `booster.json`: XGBoost's own JSON model, for a boosted classifier;
- `expected.json`: probe rows (the input example and synthetic rows that reach every corner of the
  contract) and the probabilities the fitted pipeline gave them.

The service compiles `predictor.json` (+ `booster.json`), scores the probe rows and refuses the model
unless it answers `expected.json` within the parity tolerance: nothing is unpickled. The registered
version's `serving_sha256` tag holds the sha256 of each file, written by training from its own files; the
service checks them after download and before reading anything. They guard against a changed or
corrupted artifact store, not against a registry writer, who can rewrite the tag too: the no-pickle rule
is what bounds such a writer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from api.fast import FastPredictor, UnsupportedPipeline, compile_spec, verify_parity
from api.fast.export import ExportedPredictor
from api.predictor import Columns, Row

SERVING_DIR = "serving"
PREDICTOR_FILE, BOOSTER_FILE, EXPECTED_FILE = "predictor.json", "booster.json", "expected.json"
DIGEST_TAG = "serving_sha256"
# A boosted model of 1,500 trees of depth 6 writes about 10 MB; a file far above that is refused unread.
MAX_FILE_BYTES = 256 * 1024 * 1024


class ArtifactRefused(Exception):
    """The serving artifact is missing, altered, malformed or does not answer what it promises."""


@dataclass(frozen=True)
class ServingArtifact:
    predictor: FastPredictor
    probe_rows: int
    max_error: float


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_serving(
    directory: Path, exported: ExportedPredictor, rows: Sequence[Row], probabilities: np.ndarray
) -> dict[str, str]:
    """The artifact's files in `directory`; their digests, for the DIGEST_TAG."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PREDICTOR_FILE).write_text(json.dumps(exported.spec, allow_nan=False))
    if exported.booster is not None:
        (directory / BOOSTER_FILE).write_bytes(exported.booster)
    expected = {"rows": list(rows), "probabilities": [float(p) for p in probabilities]}
    (directory / EXPECTED_FILE).write_text(json.dumps(expected, allow_nan=False))
    return {path.name: sha256(path) for path in sorted(directory.iterdir())}


def encode_digests(digests: dict[str, str]) -> str:
    return json.dumps(digests, sort_keys=True, separators=(",", ":"))


def parse_digests(text: str | None) -> dict[str, str]:
    if not text:
        raise ArtifactRefused(f"the version has no {DIGEST_TAG} tag to verify its serving artifact against")
    try:
        digests = json.loads(text)
    except ValueError:
        digests = None
    if not isinstance(digests, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in digests.items()
    ):
        raise ArtifactRefused(f"the {DIGEST_TAG} tag is not a JSON object of file -> sha256")
    return digests


def verify_digests(directory: Path, digests: dict[str, str]) -> None:
    """Every file of the artifact is listed and matches; every listed file is there."""
    present = {path.name for path in directory.iterdir()}
    if unlisted := sorted(present - set(digests)):
        raise ArtifactRefused(f"{SERVING_DIR}/ holds files its {DIGEST_TAG} tag does not list: {unlisted}")
    for name, wanted in sorted(digests.items()):
        path = directory / name
        if name not in present or not path.is_file():
            raise ArtifactRefused(f"{SERVING_DIR}/{name} is missing")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ArtifactRefused(f"{SERVING_DIR}/{name} is over {MAX_FILE_BYTES} bytes")
        if (found := sha256(path)) != wanted:
            raise ArtifactRefused(
                f"{SERVING_DIR}/{name} has sha256 {found[:12]}…, its tag says {wanted[:12]}…"
            )


def _json(path: Path) -> Any:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ArtifactRefused(f"{SERVING_DIR}/{path.name} is over {MAX_FILE_BYTES} bytes")
    try:
        return json.loads(path.read_bytes())
    except ValueError as error:
        raise ArtifactRefused(f"{SERVING_DIR}/{path.name} is not JSON: {error}") from None


def load_serving(
    directory: Path, digests: dict[str, str] | None, columns: Columns, tolerance: float
) -> ServingArtifact:
    """The predictor the artifact describes, checked: its digests when given, then its answers on the probe
    rows against the expected ones."""
    if digests is not None:
        verify_digests(directory, digests)
    for name in (PREDICTOR_FILE, EXPECTED_FILE):
        if not (directory / name).is_file():
            raise ArtifactRefused(f"{SERVING_DIR}/{name} is missing")
    booster_path = directory / BOOSTER_FILE
    booster = booster_path.read_bytes() if booster_path.is_file() else None
    try:
        predictor = compile_spec(_json(directory / PREDICTOR_FILE), booster, columns)
    except UnsupportedPipeline as error:
        raise ArtifactRefused(f"{SERVING_DIR}/{PREDICTOR_FILE}: {error}") from None
    expected = _json(directory / EXPECTED_FILE)
    rows = expected.get("rows") if isinstance(expected, dict) else None
    probabilities = expected.get("probabilities") if isinstance(expected, dict) else None
    if not isinstance(rows, list) or not isinstance(probabilities, list) or len(rows) != len(probabilities):
        raise ArtifactRefused(f"{SERVING_DIR}/{EXPECTED_FILE} must hold rows and as many probabilities")
    if not rows or not all(isinstance(row, dict) and set(row) == set(columns.order) for row in rows):
        raise ArtifactRefused(f"{SERVING_DIR}/{EXPECTED_FILE}: probe rows missing or not of the signature")
    wanted = np.asarray(probabilities, dtype=np.float64)
    try:
        max_error = verify_parity(predictor, rows, wanted)
    except (UnsupportedPipeline, TypeError, ValueError) as error:
        raise ArtifactRefused(
            f"{SERVING_DIR}/{EXPECTED_FILE}: the probe rows do not score: {error}"
        ) from None
    if not max_error <= tolerance:
        raise ArtifactRefused(
            f"the compiled predictor differs from the trained pipeline by {max_error:.3g} on {len(rows)} "
            f"probe rows (tolerance {tolerance})"
        )
    return ServingArtifact(predictor, len(rows), max_error)
