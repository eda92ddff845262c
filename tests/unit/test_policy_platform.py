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
    return (
        spec["podSelector"] == {}
        and set(spec["policyTypes"]) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    )


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


def _mongo_policies() -> dict[str, dict]:
    return {
        o["metadata"]["name"]: o
        for o in _objects("reference")
        if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == "mongo"
    }


def test_mongo_clients_reach_mongos_only() -> None:
    """Spark jobs and notebooks reach the mongos pods, not the shard or config server members."""
    pols = _mongo_policies()
    allow = pols["allow-clients-to-mongos"]
    assert allow["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/component": "mongos", "app.kubernetes.io/instance": "datacloud-mongo"}
    }
    (rule,) = allow["spec"]["ingress"]
    names = {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in rule["from"]}
    assert names == {"spark-jobs", "jupyter"}
    assert all(set(s) == {"namespaceSelector"} for s in rule["from"])
    assert rule["ports"] == [{"protocol": "TCP", "port": 27017}]
    # no other policy lets those namespaces (or anything but the exporters and the nodes) reach a member
    for name, pol in pols.items():
        if name == "allow-clients-to-mongos" or pol["spec"]["podSelector"] != {}:
            continue
        for ing in pol["spec"].get("ingress", []):
            for src in ing.get("from", []):
                if "namespaceSelector" in src:
                    assert src["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}, name
                    assert src["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "mongodb-exporter"}}, name
                elif "ipBlock" in src:
                    assert src["ipBlock"] == {"cidr": "192.168.1.0/24"}, name
                else:
                    assert src == {"podSelector": {}}, name  # the namespace itself: members and the operator


def test_mongo_members_the_exporters_and_the_nodes_still_reach_every_member() -> None:
    pols = _mongo_policies()
    same = pols["allow-same-namespace-dns-and-api"]
    assert same["spec"]["podSelector"] == {} and {"podSelector": {}} in same["spec"]["ingress"][0]["from"]
    members = pols["allow-exporters-and-nodes-to-members"]
    assert members["spec"]["podSelector"] == {}
    (rule,) = members["spec"]["ingress"]
    assert {"ipBlock": {"cidr": "192.168.1.0/24"}} in rule["from"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 27017}]


def test_the_selected_labels_are_the_ones_the_pods_carry() -> None:
    """The exporter labels the mongo policy selects are the monitoring stage's; the mongos labels
    are the operator's, for the cluster name the PerconaServerMongoDB object carries."""
    from datacloud.stages import mongo, monitoring

    inv = CASES["reference"]()
    for target in monitoring.exporter_targets(inv):
        assert mongo.EXPORTER_LABELS.items() <= monitoring.exporter_labels(target).items()
    (psmdb,) = [o for o in mongo.render(inv).all_objects() if o["kind"] == "PerconaServerMongoDB"]
    assert mongo.MONGOS_LABELS["app.kubernetes.io/instance"] == psmdb["metadata"]["name"]
