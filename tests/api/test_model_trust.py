"""The service runs no code from the registry: it serves the data artifact a model carries (compiled
predictor, booster JSON, expected answers), checked against the version's digests and its expectations,
and never unpickles a model unless ALLOW_PICKLE_MODELS=true. A refused version keeps the old one serving,
is counted, and /model says why."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from api.artifact import DIGEST_TAG, EXPECTED_FILE, PREDICTOR_FILE, SERVING_DIR, encode_digests
from tests.api.support import PARITY_TOLERANCE, digests_of, metric, metric_samples, serving, wait_until
from tests.support.malicious import malicious_model

pytestmark = pytest.mark.slow


def refused_while_old_serves(registry, client, version: str) -> dict:
    """Move production to `version`; wait for its refusal; the old version must still answer right."""
    registry.set_alias("production", version)
    wait_until(
        lambda: metric(metric_samples(client), "model_reloads_total", result="failure") >= 1,
        what="the refused reload",
    )
    card = client.get("/model").json()
    assert card["version"] == registry.production
    rows = registry.rows(20)
    answers = client.post("/predict/batch", json={"records": rows})
    assert answers.status_code == 200 and answers.json()["model_version"] == registry.production
    np.testing.assert_allclose(
        [item["probability"] for item in answers.json()["predictions"]],
        registry.expected(registry.production, 20),
        atol=PARITY_TOLERANCE,
    )
    failure = card["last_reload_failure"]
    assert failure["version"] == version
    return failure


def test_a_malicious_pickle_moved_to_production_never_runs(own_registry, tmp_path):
    marker = tmp_path / "pwned"
    source = malicious_model(own_registry.model_dir(own_registry.production), tmp_path / "evil", marker)
    # Uploaded with the genuine version's tags, digest tag included: the attacker can copy those.
    version = own_registry.add_version(source.as_uri())
    with serving(own_registry.settings()) as client:
        failure = refused_while_old_serves(own_registry, client, str(version))
        assert "ALLOW_PICKLE_MODELS" in failure["reason"]
    assert not marker.exists(), "the service unpickled the registry's model"


def test_a_serving_artifact_altered_in_the_store_is_refused_by_its_digest(own_registry, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(own_registry.model_dir(own_registry.production), altered)
    spec_file = altered / SERVING_DIR / PREDICTOR_FILE
    spec = json.loads(spec_file.read_text())
    spec["numeric"][0]["mean"] += 1.0  # well-formed, and wrong
    spec_file.write_text(json.dumps(spec))
    version = own_registry.add_version(altered.as_uri())
    with serving(own_registry.settings()) as client:
        failure = refused_while_old_serves(own_registry, client, str(version))
    assert "sha256" in failure["reason"] and PREDICTOR_FILE in failure["reason"]


def test_an_artifact_that_does_not_answer_its_expectations_is_refused(own_registry, tmp_path):
    """Digests rewritten to match (a registry writer can do that): the probe rows still catch it."""
    altered = tmp_path / "re-signed"
    shutil.copytree(own_registry.model_dir(own_registry.production), altered)
    expected_file = altered / SERVING_DIR / EXPECTED_FILE
    expected = json.loads(expected_file.read_text())
    expected["probabilities"][0] = min(1.0, expected["probabilities"][0] + 0.01)
    expected_file.write_text(json.dumps(expected))
    tags = own_registry.tags(own_registry.production)
    tags[DIGEST_TAG] = encode_digests(digests_of(altered / SERVING_DIR))
    version = own_registry.add_version(altered.as_uri(), tags)
    with serving(own_registry.settings()) as client:
        failure = refused_while_old_serves(own_registry, client, str(version))
    assert "differs from the trained pipeline" in failure["reason"]


def test_a_version_without_a_digest_tag_is_refused(own_registry):
    tags = own_registry.tags(own_registry.production)
    del tags[DIGEST_TAG]
    source = own_registry.client().get_model_version(own_registry.model_name, own_registry.production).source
    version = own_registry.add_version(source, tags)
    with serving(own_registry.settings()) as client:
        failure = refused_while_old_serves(own_registry, client, str(version))
    assert DIGEST_TAG in failure["reason"]


def test_a_model_without_an_artifact_is_not_ready_and_says_why(api_registry, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(
        api_registry.model_dir(api_registry.production), bare, ignore=shutil.ignore_patterns("serving")
    )
    with serving(api_registry.settings(model_uri=str(bare), retry_max_seconds=0.1), ready=False) as client:
        wait_until(
            lambda: metric(metric_samples(client), "model_reloads_total", result="failure") >= 1,
            what="the refused load",
        )
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "serving/" in ready.json()["reason"] and "ALLOW_PICKLE_MODELS" in ready.json()["reason"]
    # The same directory serves, unpickled, only when the operator allows it.
    with serving(api_registry.settings(model_uri=str(bare), allow_pickle_models=True)) as client:
        card = client.get("/model").json()
        assert card["predictor"].startswith("fast-") and card["max_parity_error"] <= PARITY_TOLERANCE
