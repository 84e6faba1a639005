"""Every kustomization renders, and what it renders is valid: kubernetes-validate for the built-in kinds
(Kubernetes KUBERNETES_VERSION, strict), the vendored schemas for the custom resources."""

from __future__ import annotations

import copy
import json

import pytest

from tests.kubernetes.conftest import only
from tests.kubernetes.manifests import (
    CUSTOM_RESOURCE_SCHEMAS,
    KUSTOMIZATIONS,
    REPO_ROOT,
    builtin_errors,
    custom_errors,
    is_custom,
)

# Kinds that live in no namespace.
CLUSTER_SCOPED = {"Namespace"}
# What is applied: the overlays and the other two, never api/k8s/base alone (it has no namespace or image).
APPLIED = tuple(kustomization for kustomization in KUSTOMIZATIONS if not kustomization.endswith("/base"))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_builtin_kinds_pass_kubernetes_validate(rendered, kustomization):
    assert builtin_errors(rendered[kustomization]) == []


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_custom_resources_pass_their_vendored_schemas(rendered, check_jsonschema, kustomization):
    assert custom_errors(rendered[kustomization], check_jsonschema) == []


def test_every_custom_resource_kind_is_rendered_and_checked(rendered):
    # A schema nobody's manifest uses, or a CR no schema checks (kubernetes-validate would refuse it).
    kinds = {
        (m["apiVersion"], m["kind"]) for manifests in rendered.values() for m in manifests if is_custom(m)
    }
    assert kinds == set(CUSTOM_RESOURCE_SCHEMAS)


def test_a_misspelt_field_fails_either_check(rendered, check_jsonschema):
    # Both checks are strict: the API server would prune an unknown field silently.
    deployment = copy.deepcopy(only(rendered["api/k8s/overlays/prod"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    assert builtin_errors([deployment])
    scaled_object = copy.deepcopy(only(rendered["api/k8s/overlays/prod"], "ScaledObject"))
    scaled_object["spec"]["minReplicas"] = 2
    assert custom_errors([scaled_object], check_jsonschema)


def test_vendored_schemas_name_their_pinned_source():
    for schema in CUSTOM_RESOURCE_SCHEMAS.values():
        comment = json.loads(schema.read_text())["$comment"]
        assert "From npm @kubernetes-models/" in comment and "@" in comment.split("npm ", 1)[1]


@pytest.mark.parametrize("kustomization", APPLIED)
def test_every_object_has_its_own_namespace(rendered, kustomization):
    # checkov's CKV_K8S_21 reads the files before Kustomize sets it (.checkov.yaml); this reads after.
    for manifest in rendered[kustomization]:
        if manifest["kind"] in CLUSTER_SCOPED:
            continue
        assert manifest["metadata"].get("namespace") not in (None, "", "default"), manifest["metadata"][
            "name"
        ]


@pytest.mark.parametrize("kustomization", APPLIED)
def test_every_image_is_tagged_and_not_latest(rendered, kustomization):
    # CKV_K8S_14 likewise (.checkov.yaml).
    for manifest in rendered[kustomization]:
        if manifest["kind"] != "Deployment":
            continue
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert "/" in name and tag not in ("", "latest") and "/" not in tag, image


def test_kustomizations_listed_are_all_there_are():
    found = {
        str(path.parent.relative_to(REPO_ROOT)) for path in REPO_ROOT.glob("*/k8s/**/kustomization.yaml")
    }
    assert found == set(KUSTOMIZATIONS)
