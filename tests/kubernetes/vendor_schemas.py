"""Vendor the JSON schemas of the custom resources the manifests use, at pinned npm versions.

    python -m tests.kubernetes.vendor_schemas    # npm pack, extract, write tests/kubernetes/schemas/

npm's @kubernetes-models packages are generated from the operators' CRDs. Their newer releases
(@kubernetes-models/keda 2.x, @kubernetes-models/prometheus-operator 4.x and later) ship only validators
compiled to JavaScript, which check-jsonschema cannot read; the releases pinned here are the last ones
whose modules carry the schema itself, as a JSON object literal (`const schema = {...};`).

Two changes are made to each schema, both written into its `$comment`:
- `metadata` refers to apimachinery's ObjectMeta in another package; it becomes a plain object
  (kubernetes-validate checks ObjectMeta on the built-in kinds; kustomize writes these names).
- Every object that lists its properties and does not preserve unknown fields gets
  `additionalProperties: false`, like kubernetes-validate's --strict: the API server would silently
  prune a misspelt field, so that a typo would change nothing and fail nowhere.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).resolve().parent / "schemas"

# (npm package@version, module inside it, the CRD it was generated from, schema file written)
VENDORED = (
    (
        "@kubernetes-models/keda@0.3.2",
        "keda.sh/v1alpha1/ScaledObject.js",
        "KEDA v2.10.1 (keda-2.10.1.yaml)",
        "scaledobject_v1alpha1.json",
    ),
    (
        "@kubernetes-models/prometheus-operator@1.6.3",
        "monitoring.coreos.com/v1/ServiceMonitor.js",
        "prometheus-operator's example CRDs at that release",
        "servicemonitor_v1.json",
    ),
    (
        "@kubernetes-models/prometheus-operator@1.6.3",
        "monitoring.coreos.com/v1/PrometheusRule.js",
        "prometheus-operator's example CRDs at that release",
        "prometheusrule_v1.json",
    ),
)

SCHEMA_LITERAL = re.compile(r"^const schema = (\{.*?^\});$", re.MULTILINE | re.DOTALL)


def strict(node: Any) -> Any:
    """`additionalProperties: false` on every object schema that names its properties."""
    if isinstance(node, dict):
        for value in node.values():
            strict(value)
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    elif isinstance(node, list):
        for item in node:
            strict(item)
    return node


def schema_of(package: str, module: str, source: str, workdir: Path) -> dict[str, Any]:
    tarball = subprocess.run(
        ["npm", "pack", "--silent", package], cwd=workdir, check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    with tarfile.open(workdir / tarball) as archive:
        member = archive.extractfile(f"package/{module}")
        assert member is not None, f"{package} has no {module}"
        text = member.read().decode()
    match = SCHEMA_LITERAL.search(text)
    if match is None:
        raise SystemExit(f"{package} {module}: no JSON schema literal (a compiled-only release?)")
    schema = json.loads(match.group(1))
    schema["properties"]["metadata"] = {"type": "object"}
    strict(schema)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"From npm {package}, {module}, generated from {source}. Written by "
        "tests/kubernetes/vendor_schemas.py: metadata is a plain object, and unknown fields are errors.",
        **schema,
    }


def main() -> None:
    SCHEMAS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for package, module, source, name in VENDORED:
            schema = schema_of(package, module, source, Path(workdir))
            (SCHEMAS / name).write_text(json.dumps(schema, indent=2) + "\n")
            print(f"{name}: {package} {module}")


if __name__ == "__main__":
    main()
