"""Offline schema checks for rendered Kubernetes objects.

Core kinds go through kubernetes-validate (strict: unknown fields fail) for the
cluster's Kubernetes minor. Custom resources are checked against the
``openAPIV3Schema`` of the CRD the pinned upstream chart ships
(tests/helpers/chart_crds.py), read the way the API server reads it with strict
field validation: a field the schema does not declare is an error (unless the
schema preserves unknown fields), ``required``, ``enum``, types, ``nullable``
and ``x-kubernetes-int-or-string`` hold. CEL rules (``x-kubernetes-validations``)
and formats are left to the real server: tests/apiserver dry-runs every object
on a real kube-apiserver with the same CRDs installed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate

from tests.helpers import chart_crds

# What the API server itself handles in every object: apiVersion/kind/metadata.
_OBJECT_META = {"type": "object"}  # ObjectMeta is validated by the server, not by the CRD


def _convert(node: Any, *, root: bool = False, prune: bool = True) -> Any:
    """A structural CRD schema as the JSON schema the API server effectively enforces.

    ``prune`` False inside ``allOf``/``anyOf``/``oneOf``/``not``: there (structural schema
    rules) ``properties`` only constrain values and never decide which fields are known.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: _convert(v, prune=prune) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, prune=prune)
        elif key == "not" and isinstance(value, dict):
            out[key] = _convert(value, prune=False)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_convert(v, prune=False) for v in value]
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "description", "default", "example"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    embedded = node.get("x-kubernetes-embedded-resource") or root
    if embedded:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = _OBJECT_META
    is_object = node.get("type") == "object" or "properties" in node
    if prune and is_object and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
        out["additionalProperties"] = False  # strict field validation: an undeclared field is an error
    return out


@cache
def crd_schema(kind: str, api_version: str | None = None) -> dict[str, Any] | None:
    """JSON schema of a custom resource kind from the pinned charts' CRDs (None when no chart has it).

    Without ``api_version``: the storage version of the kind's CRD.
    """
    group, _, version = (api_version or "").partition("/")
    crd = chart_crds.crd_for(group, kind) if group else _crd_by_kind(kind)
    if crd is None:
        return None
    if not version:
        version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    schema = chart_crds.version_schema(crd, version)
    return None if schema is None else _convert(schema, root=True)


def _crd_by_kind(kind: str) -> dict[str, Any] | None:
    for rel in chart_crds.platform_releases():
        for crd in chart_crds.crds_in(chart_crds.release_archive(rel)):
            if crd["spec"]["names"]["kind"] == kind:
                return crd
    return None


def kube_minor(version: str) -> str:
    major, minor, *_ = version.split(".")
    return f"{major}.{minor}"


def validate_object(obj: dict[str, Any], kubernetes_version: str) -> None:
    """Raise AssertionError naming the object when it does not validate."""
    kind = obj.get("kind", "?")
    name = (obj.get("metadata") or {}).get("name", "?")
    try:
        kubernetes_validate.validate(obj, kube_minor(kubernetes_version), strict=True)
        return
    except kubernetes_validate.SchemaNotFoundError:
        pass
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{kind}/{name}: {str(exc).splitlines()[0]}") from None
    api_version = obj.get("apiVersion", "")
    if "/" not in api_version:
        raise AssertionError(f"{kind}/{name}: no schema in kubernetes-validate for {api_version or 'no apiVersion'}")
    schema = crd_schema(kind, api_version)
    if schema is None:
        raise AssertionError(f"{kind}/{name}: no pinned chart ships a CRD serving {api_version} {kind}")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"at {'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors[:5]]
        raise AssertionError(f"{kind}/{name} ({api_version}, CRD of the pinned chart) " + "; ".join(lines))


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container (and init container) in a workload object's pod template."""
    spec = obj.get("spec") or {}
    pod = None
    if obj.get("kind") == "Pod":
        pod = spec
    elif "template" in spec:
        pod = (spec.get("template") or {}).get("spec")
    elif "jobTemplate" in spec:
        pod = ((spec["jobTemplate"].get("spec") or {}).get("template") or {}).get("spec")
    if not pod:
        return []
    return list(pod.get("containers") or []) + list(pod.get("initContainers") or [])
