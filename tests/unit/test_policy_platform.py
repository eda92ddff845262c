"""Policies over everything the platform renders (all stages, several inventories)."""

from __future__ import annotations

import pytest

from datacloud.render import render_stage
from datacloud.stages import STAGES
from tests.helpers import datalayer_inventories as inventories
from tests.helpers.kube_schema import validate_object

CASES = {"reference": inventories.reference, "three-node": inventories.three_nodes, "local-path": inventories.local_path}


def _objects(name: str) -> list[dict]:
    inv = CASES[name]()
    return [o for stage in STAGES for o in render_stage(stage, inv).all_objects()]


def _is_default_deny(p: dict) -> bool:
    spec = p["spec"]
    return spec["podSelector"] == {} and set(spec["policyTypes"]) == {"Ingress", "Egress"} and not spec.get("ingress") and not spec.get("egress")


@pytest.mark.parametrize("name", CASES)
def test_every_namespace_we_create_denies_by_default_and_allows_explicitly(name: str) -> None:
    objs = _objects(name)
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    assert {"mongo", "spark-jobs", "jupyter", "monitoring"} <= namespaces
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    for ns in sorted(namespaces):
        mine = [p for p in policies if p["metadata"]["namespace"] == ns]
        assert any(_is_default_deny(p) for p in mine), f"namespace {ns} has no default-deny NetworkPolicy"
        assert any(not _is_default_deny(p) for p in mine), f"namespace {ns} has no explicit allow"


@pytest.mark.parametrize("name", CASES)
def test_policies_validate(name: str) -> None:
    inv = CASES[name]()
    for p in (o for o in _objects(name) if o["kind"] == "NetworkPolicy"):
        validate_object(p, inv.cluster.kubernetes_version)


def test_mongo_is_reachable_only_from_its_clients() -> None:
    objs = _objects("reference")
    (allow,) = [o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "allow-clients-27017"]
    sources = allow["spec"]["ingress"][0]["from"]
    names = {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in sources if "namespaceSelector" in s}
    assert names == {"spark-jobs", "jupyter", "monitoring"}
    assert [s["ipBlock"]["cidr"] for s in sources if "ipBlock" in s] == ["192.168.1.0/24"]
    assert allow["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 27017}]
