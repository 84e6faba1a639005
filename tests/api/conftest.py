from __future__ import annotations

import pytest

from tests.api.support import ApiRegistry, build_registry


@pytest.fixture(scope="session")
def api_registry(trained_pipeline, tmp_path_factory) -> ApiRegistry:
    """Read-only: production, challenger and broken versions of the session's real pipeline model."""
    return build_registry(trained_pipeline, tmp_path_factory.mktemp("api-registry"))


@pytest.fixture
def own_registry(api_registry, tmp_path) -> ApiRegistry:
    """A copy of the registry that a test may change (move aliases, add versions)."""
    return api_registry.copy(tmp_path / "registry")
