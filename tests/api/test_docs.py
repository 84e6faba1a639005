"""The documentation the service publishes: `/` leads to it, it describes whole numbers as integers and
the answer's label as one of the model's labels, and /docs renders in a browser that cannot reach the
internet (its Swagger UI comes from the fastapi-offline wheel, not a CDN)."""

from __future__ import annotations

import sys

import pytest

from tests.api.support import serving
from tests.support.browser import offline_chromium
from tests.support.processes import REPO_ROOT, free_port, running, subprocess_env

pytestmark = pytest.mark.slow


def test_the_front_page_redirects_to_the_docs(api_registry):
    with serving(api_registry.settings(), ready=False) as client:
        answer = client.get("/", follow_redirects=False)
        assert answer.status_code == 307 and answer.headers["location"] == "/docs"
        assert "/" not in client.get("/openapi.json").json()["paths"]


def test_whole_number_features_are_integers_in_the_schema_with_integer_examples(api_registry):
    metadata = api_registry.metadata(api_registry.production)
    whole = [name for name, spec in metadata["numeric"].items() if spec["dtype"].startswith("int")]
    assert whole, "the model has no whole-number feature: the test shows nothing"
    with serving(api_registry.settings()) as client:
        document = client.get("/openapi.json").json()
        request = document["components"]["schemas"]["PredictionRequest"]
        example = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"][
            "example"
        ]
        for name in whole:
            schema = request["properties"][name]
            assert schema["type"] == "integer" and "multipleOf" not in schema, (name, schema)
            assert schema["minimum"] == metadata["numeric"][name]["min"]
            assert type(example[name]) is int, (name, example[name])
        # Still accepted the way JSON writes numbers: 42.0 is the whole number 42.
        row = {**api_registry.rows(1)[0], whole[0]: float(example[whole[0]])}
        assert client.post("/predict", json=row).status_code == 200


def test_the_answer_s_label_is_documented_as_one_of_the_model_s_labels(api_registry):
    labels = api_registry.metadata(api_registry.production)["labels"]
    with serving(api_registry.settings()) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        for response in ("PredictionResponse", "BatchItem"):
            assert sorted(schemas[response]["properties"]["label"]["enum"]) == sorted(labels)


def test_the_docs_page_renders_offline_and_shows_the_predict_operation(api_registry, tmp_path):
    port = free_port()
    env = subprocess_env(MODEL_URI=str(api_registry.model_dir(api_registry.production)))
    command = [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    with (
        running(command, tmp_path / "api.log", f"{base}/ready", timeout=120, env=env, cwd=REPO_ROOT),
        offline_chromium(tmp_path) as page,
    ):
        operation = "[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)"
        visit = page.visit(f"{base}/docs", ready=f"{operation}.includes('/predict')")
        paths = page.evaluate(operation)
        page.screenshot(tmp_path / "docs.png")
        redoc = page.visit(f"{base}/redoc", ready="document.querySelectorAll('[data-section-id]').length > 0")
    assert "/predict" in paths and "/predict/batch" in paths
    assert visit.foreign_hosts() == set(), visit.requests
    # ReDoc's own bundle links its "API docs by Redocly" logo from its CDN; offline that one image is
    # missing and the page renders all the same. Nothing else leaves.
    assert redoc.foreign_hosts() <= {"cdn.redoc.ly"}, redoc.requests
    assert (tmp_path / "docs.png").stat().st_size > 10_000
