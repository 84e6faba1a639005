"""Where the service's inference and feedback logs are, for the stages that read them (drift-report,
retrain): INFERENCE_LOG_DIR and FEEDBACK_LOG_DIR, checked by the service's own rule (api/log_store.py), a
local path taken from the workspace, an s3:// URI as it is."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.dataset as ds

from api.log_store import LogStore, check_location, child, is_uri
from stages.errors import StageError
from stages.workspace import workspace


def log_locations(inference: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """(the inference log, the feedback log: FEEDBACK_LOG_DIR, else INFERENCE_LOG_DIR/feedback)."""
    feedback = environ.get("FEEDBACK_LOG_DIR", "") or child(inference, "feedback")
    locations = []
    for name, location in (("INFERENCE_LOG_DIR", inference), ("FEEDBACK_LOG_DIR", feedback)):
        try:
            check_location(location)
        except ValueError as error:
            raise StageError(f"{name}: {error}") from error
        locations.append(location if is_uri(location) else str(workspace() / location))
    return locations[0], locations[1]


def log_dataset(location: str, columns: pa.Schema | None = None) -> ds.Dataset | None:
    """A log as a reader sees it (LogStore.dataset: its own complete files, on disk or S3, with the
    partition columns as text); None with no file. A store that cannot be read is a StageError."""
    try:
        return LogStore.of(location).dataset(columns)
    except OSError as error:  # an unreachable endpoint, refused keys
        raise StageError(f"cannot read the log at {location}: {error}") from error
