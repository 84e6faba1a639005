"""Helpers for the service tests: registries built from the session's real pipeline run, apps under their
lifespan, and reading /metrics."""

from __future__ import annotations

import http.client
import json
import math
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import Model
from prometheus_client.parser import text_string_to_metric_families

from api.artifact import DIGEST_TAG, PREDICTOR_FILE, SERVING_DIR, encode_digests, sha256
from api.main import create_app
from api.settings import Settings
from stages.features import model_inputs
from stages.params import parse, read_yaml

CHALLENGER_ALIAS = "challenger"
PARITY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ApiRegistry:
    """A private copy of the pipeline's registry: `production` (the chosen family), `challenger` (the other
    family, registered from its training run) and `broken` (a version whose model files are garbage)."""

    tracking_uri: str
    model_name: str
    production: str
    challenger: str
    broken: str
    families: dict[str, str]
    features: dict[str, Any]
    test_frame: pd.DataFrame = field(repr=False)
    workdir: Path

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def copy(self, dest: Path) -> ApiRegistry:
        """The same versions and aliases in a new database file, for a test that moves aliases."""
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.tracking_uri.removeprefix("sqlite:///"), dest / "mlflow.db")
        return ApiRegistry(
            **{**self.__dict__, "tracking_uri": f"sqlite:///{dest / 'mlflow.db'}", "workdir": dest}
        )

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mlflow_tracking_uri": self.tracking_uri,
            "model_name": self.model_name,
            "model_alias": "production",
            "model_uri": None,
            "reload_interval_seconds": 0.2,
            "retry_initial_seconds": 0.05,
            "retry_max_seconds": 0.5,
        }
        values.update(overrides)
        return Settings(**values)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client().get_model_version(self.model_name, version).tags)

    def add_version(self, source: str, tags: dict[str, str] | None = None) -> str:
        """A new version of the served model from `source`, with production's tags (its serving digests
        included) unless others are given; its number."""
        tags = self.tags(self.production) if tags is None else tags
        return str(self.client().create_model_version(self.model_name, source=source, tags=tags).version)

    def set_alias(self, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(self.model_name, alias, version)

    def model_dir(self, version: str) -> Path:
        return download_version(self.tracking_uri, self.model_name, version)

    def metadata(self, version: str) -> dict[str, Any]:
        return Model.load(str(self.model_dir(version))).metadata["feature_metadata"]

    def input_example(self, version: str) -> list[dict[str, Any]]:
        path = str(self.model_dir(version))
        return json_rows(Model.load(path).load_input_example(path).astype(object))

    def pipeline(self, version: str) -> Any:
        return load_pipeline(str(self.model_dir(version)))

    def rows(self, count: int | None = None) -> list[dict[str, Any]]:
        return json_rows(self.test_frame if count is None else self.test_frame.head(count))

    def expected(self, version: str, count: int | None = None) -> np.ndarray:
        frame = self.test_frame if count is None else self.test_frame.head(count)
        return self.pipeline(version).predict_proba(frame)[:, 1]


def negative_and_positive(features: dict[str, Any]) -> tuple[str, str]:
    """The two labels, the positive one (what the probabilities are of) second, whatever order lists them."""
    positive = features["positive_label"]
    (negative,) = [label for label in features["labels"] if label != positive]
    return negative, positive


@cache
def download_version(tracking_uri: str, name: str, version: str) -> Path:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    location = client.get_model_version_download_uri(name, version)
    target = Path(location.removeprefix("file://"))
    if target.is_dir():
        return target
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=tracking_uri))


@cache
def load_pipeline(path: str) -> Any:
    return mlflow.sklearn.load_model(path)


def json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """What a client sends: numbers, strings, and null for missing values."""
    rows = []
    for record in frame.to_dict(orient="records"):
        rows.append(
            {
                key: None if (isinstance(value, float) and math.isnan(value)) else value
                for key, value in record.items()
            }
        )
    return rows


def digests_of(directory: Path) -> dict[str, str]:
    return {path.name: sha256(path) for path in sorted(directory.iterdir())}


def build_registry(trained_pipeline: Any, workdir: Path) -> ApiRegistry:
    workdir.mkdir(parents=True, exist_ok=True)
    source_db = Path(trained_pipeline.tracking_uri.removeprefix("sqlite:///"))
    shutil.copy2(source_db, workdir / "mlflow.db")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = trained_pipeline.model_name
    production = client.get_model_version_by_alias(name, "production")
    chosen_run = client.get_run(production.run_id)
    parent_id = chosen_run.data.tags["mlflow.parentRunId"]
    experiment = chosen_run.info.experiment_id
    # The other family's candidate run (production is the chosen family, refitted on train + validation).
    (sibling,) = [
        run
        for run in client.search_runs(
            [experiment], f"tags.mlflow.parentRunId = '{parent_id}' and tags.role = 'candidate'"
        )
        if run.data.params["family"] != chosen_run.data.params["family"]
    ]
    (logged,) = client.search_logged_models(
        experiment_ids=[experiment], filter_string=f"source_run_id = '{sibling.info.run_id}'"
    )
    # A registry source given as a file URI: `models:/m-...` would be resolved against the global store.
    # The sibling's own serving digests: production's would not match its artifact.
    challenger = client.create_model_version(
        name,
        source=logged.artifact_location,
        run_id=sibling.info.run_id,
        tags={**production.tags, DIGEST_TAG: sibling.data.tags[DIGEST_TAG]},
    )
    client.set_registered_model_alias(name, CHALLENGER_ALIAS, challenger.version)

    broken_dir = workdir / "broken-model"
    shutil.copytree(download_version(uri, name, str(production.version)), broken_dir)
    (broken_dir / "model.skops").write_bytes(b"this is not a model")
    (broken_dir / SERVING_DIR / PREDICTOR_FILE).write_text("this is not a predictor")
    # Its digests match its files: what breaks is the content, which the load must refuse.
    broken = client.create_model_version(
        name,
        source=broken_dir.as_uri(),
        tags={
            "status": "broken on purpose",
            DIGEST_TAG: encode_digests(digests_of(broken_dir / SERVING_DIR)),
        },
    )

    text = (trained_pipeline.workdir / "params.yaml").read_text()
    features = yaml.safe_load(text)["features"]
    typed = parse(read_yaml(text, "params.yaml")).features
    test_frame = model_inputs(pd.read_parquet(trained_pipeline.test_split), typed)
    return ApiRegistry(
        tracking_uri=uri,
        model_name=name,
        production=str(production.version),
        challenger=str(challenger.version),
        broken=str(broken.version),
        families={
            str(production.version): chosen_run.data.params["family"],
            str(challenger.version): sibling.data.params["family"],
        },
        features=features,
        test_frame=test_frame,
        workdir=workdir,
    )


# ---------------------------------------------------------------------------------------------- processes
# A server started as real processes (tests/api/test_workers.py), over HTTP.
THREADS, PER_CONNECTION = 8, 25  # 80 connections: each is served by the one worker that accepted it

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


def by_pid(samples: Samples, name: str) -> dict[int, float]:
    return {int(dict(labels)["pid"]): value for (sample, labels), value in samples.items() if sample == name}


def wait_for_workers(base: str, workers: int, timeout: float = 90.0) -> Samples:
    """/metrics once `workers` worker processes are up, each with its model."""
    samples: Samples = {}

    def loaded() -> bool:
        nonlocal samples
        samples = scrape(base)
        # model_loaded is livemin: 1 only when every live worker serves a model
        return (
            len(by_pid(samples, "process_start_time_seconds")) == workers
            and total(samples, "model_loaded") == 1
        )

    wait_until(loaded, timeout, f"{workers} workers, each with its model")
    return samples


def send(base: str, requests: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Each request on its thread's connection, a new connection every PER_CONNECTION requests."""
    host, port = base.removeprefix("http://").split(":")

    def run(share: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        answers, connection = [], None
        for number, (path, body) in enumerate(share):
            if number % PER_CONNECTION == 0:
                if connection is not None:
                    connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
            assert connection is not None
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            answers.append(answer)
        if connection is not None:
            connection.close()
        return answers

    with ThreadPoolExecutor(THREADS) as pool:
        shares = pool.map(run, [requests[start::THREADS] for start in range(THREADS)])
        return [answer for share in shares for answer in share]


# ---------------------------------------------------------------------------------------------- the app
def read_log(root: Path) -> pd.DataFrame:
    """What a reader sees of an inference or feedback log: every complete file, with the partition columns.

    pyarrow's dataset discovery skips the `.` files a writer has not finished, so this never opens one.
    """
    if not any(root.glob("model_name=*/model_version=*/date=*/[!.]*.parquet")):
        return pd.DataFrame()
    return pd.read_parquet(root, partitioning="hive")


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    last: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal last
        response = client.get("/ready")
        last = response.json()
        return response.status_code == 200

    try:
        wait_until(ready, timeout, "/ready")
    except AssertionError as error:
        raise AssertionError(f"{error}; last answer {last}") from None


@contextmanager
def serving(settings: Settings, ready: bool = True) -> Iterator[TestClient]:
    """The app under its lifespan (so the loader runs), once it serves a model."""
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client


def metric_samples(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, keyed by (sample name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset], float], sample_name: str, /, **labels: str) -> float:
    """One sample's value (0 when absent); labels not given are summed over."""
    wanted = set(labels.items())
    return sum(
        value
        for (name, sample_labels), value in samples.items()
        if name == sample_name and wanted <= sample_labels
    )
