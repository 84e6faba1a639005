from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from tests.api.support import ApiRegistry, build_registry
from tests.support.services import moto_server


@pytest.fixture(scope="session")
def api_registry(trained_pipeline, tmp_path_factory) -> ApiRegistry:
    """Read-only: production, challenger and broken versions of the session's real pipeline model."""
    return build_registry(trained_pipeline, tmp_path_factory.mktemp("api-registry"))


@pytest.fixture
def own_registry(api_registry, tmp_path) -> ApiRegistry:
    """A copy of the registry that a test may change (move aliases, add versions)."""
    return api_registry.copy(tmp_path / "registry")


@pytest.fixture
def s3_bucket(tmp_path, monkeypatch) -> Iterator[str]:
    """A bucket on a real S3 API on loopback (moto), and the AWS variables the service reads it with."""
    url, server = moto_server(tmp_path / "moto.log")
    with server:
        variables = {"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1"}
        for name, value in {
            **variables,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket="logs")
        yield "logs"
