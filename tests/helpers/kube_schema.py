"""Offline schema checks for rendered Kubernetes objects.

Core kinds go through kubernetes-validate (strict: unknown fields fail) for the
cluster's Kubernetes minor. Custom resources have no published schema here, so
each CRD kind we write has a JSON schema of our own under tests/schemas/
(``<kind>.json``) covering the fields we set, with additionalProperties false
where we control the object.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@cache
def crd_schema(kind: str) -> dict[str, Any] | None:
    path = SCHEMAS / f"{kind}.json"
    return json.loads(path.read_text()) if path.exists() else None


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
    schema = crd_schema(kind)
    if schema is None:
        raise AssertionError(f"{kind}/{name}: no schema in kubernetes-validate and none of ours in tests/schemas/{kind}.json")
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        raise AssertionError(f"{kind}/{name} at {path or '(root)'}: {exc.message}") from None


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
