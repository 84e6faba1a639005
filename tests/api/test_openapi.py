"""The OpenAPI document describes every feature from the model's own metadata, and fuzzing it finds no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from api.main import create_app
from tests.api.support import serving, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spec(api_registry):
    with serving(api_registry.settings()) as client:
        assert client.get("/docs").status_code == 200
        yield client.get("/openapi.json").json()


def test_every_feature_is_documented_with_its_type_range_or_categories(spec, api_registry):
    metadata = api_registry.metadata(api_registry.production)
    record = spec["components"]["schemas"]["PredictionRequest"]
    assert list(record["properties"]) == metadata["feature_order"]
    assert set(record["required"]) == set(metadata["feature_order"])
    assert record["additionalProperties"] is False
    for name, meta in metadata["numeric"].items():
        field = record["properties"][name]
        options = field.get("anyOf", [field])
        # Whole-number features are documented as `integer`, the others as `number`.
        number = next(option for option in options if option.get("type") in {"number", "integer"})
        assert (number["minimum"], number["maximum"]) == (meta["min"], meta["max"])
        assert ({"type": "null"} in options) == meta["nullable"]
        assert field["description"]
    for name, meta in metadata["categorical"].items():
        field = record["properties"][name]
        options = field.get("anyOf", [field])
        (enum,) = [option["enum"] for option in options if "enum" in option]
        assert enum == meta["allowed"]
        assert ({"type": "null"} in options) == meta["nullable"]


def test_the_examples_are_synthetic_medians_and_modes_not_real_rows(spec, api_registry):
    real_rows = api_registry.input_example(api_registry.production)
    metadata = api_registry.metadata(api_registry.production)
    single = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    batch = spec["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]
    example = single["example"]
    assert example not in real_rows and str(real_rows[0]) not in str(spec)
    assert batch["example"] == {"records": [example]}
    assert list(example) == metadata["feature_order"]
    for name, meta in metadata["categorical"].items():
        assert example[name] == max(meta["frequencies"], key=meta["frequencies"].get)
    for name, meta in metadata["numeric"].items():
        assert meta["min"] <= example[name] <= meta["max"]
        edges = meta["histogram"]["edges"]
        if len(edges) == 11:  # deciles: the median lies between the 4th and the 6th
            assert edges[4] <= example[name] <= edges[6], name
    assert single["schema"] == {"$ref": "#/components/schemas/PredictionRequest"}


def test_the_examples_work(api_registry, spec):
    with serving(api_registry.settings()) as client:
        for path in ("/predict", "/predict/batch"):
            example = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
            assert client.post(path, json=example).status_code == 200


def test_feedback_and_request_ids_are_documented(spec, api_registry):
    schemas = spec["components"]["schemas"]
    item = schemas["FeedbackItem"]
    assert item["properties"]["label"]["enum"] == api_registry.features["labels"] or set(
        item["properties"]["label"]["enum"]
    ) == set(api_registry.features["labels"])
    assert set(item["required"]) == {"request_id", "label"}
    body = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["anyOf"][1]["maxItems"] == 1000
    answer = spec["paths"]["/feedback"]["post"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/FeedbackResponse"}
    for name in ("PredictionResponse", "BatchPredictionResponse", "BatchItem", "ErrorResponse",
                 "ValidationErrorResponse", "FeedbackResponse"):  # fmt: skip
        assert "request_id" in schemas[name]["required"], name


def test_error_answers_are_documented(spec):
    for path in ("/predict", "/predict/batch", "/feedback"):
        assert {"200", "413", "422", "503"} <= set(spec["paths"][path]["post"]["responses"])
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


@pytest.fixture(scope="module")
def fuzzed_schema(api_registry):
    """The app with a local copy of the production model. Schemathesis runs the app's lifespan itself (and
    keeps it until the process ends), so the spec is read again once the model, and its schema, is in."""
    model_dir = api_registry.model_dir(api_registry.production)
    app = create_app(api_registry.settings(model_uri=str(model_dir), max_batch_size=20))
    schemathesis.openapi.from_asgi("/openapi.json", app)
    wait_until(lambda: app.state.service.model is not None, timeout=120, what="the model")
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzing_finds_no_server_error_and_every_answer_matches_the_schema(fuzzed_schema, mode):
    """Valid data must be accepted, invalid data rejected with a 4xx, and every answer (status code, media
    type, body) must be the one the spec documents. (Schemathesis's pytest loader for fixtures does not
    run under pytest 9, so each operation's strategy is driven by Hypothesis here.)"""
    strategy = fuzzed_schema.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate()

    check()
