"""The CRDs the pinned charts ship, installed on the real server (session fixture ``crds``)."""

from __future__ import annotations

from tests.apiserver.platform import INVENTORIES, stage_renders, stage_runs
from tests.helpers import chart_crds


def test_every_chart_crd_is_established_and_served(apiserver, crds):
    listed = {
        c["metadata"]["name"]: c for c in apiserver.get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")["items"]
    }
    assert set(crds) <= set(listed)
    for name, (_render, crd) in crds.items():
        conditions = {c["type"]: c["status"] for c in listed[name]["status"]["conditions"]}
        assert conditions.get("Established") == "True", (name, conditions)
        assert conditions.get("NamesAccepted") == "True", (name, conditions)
        for version in (v["name"] for v in crd["spec"]["versions"] if v.get("served")):
            group_version = f"{crd['spec']['group']}/{version}"
            kinds = {r["kind"] for r in apiserver.get_json(f"/apis/{group_version}")["resources"]}
            assert crd["spec"]["names"]["kind"] in kinds, (name, group_version)


def test_every_custom_resource_the_stages_write_has_its_chart_crd(apiserver, crds):
    served = {(c["spec"]["group"], c["spec"]["names"]["kind"]) for _r, c in crds.values()}
    crd_groups = {group for group, _kind in served}
    built_in = {g["name"] for g in apiserver.get_json("/apis")["groups"]} - crd_groups
    objects = [o for inv in INVENTORIES for r in stage_renders(inv).values() for o in r.all_objects()]
    objects += [o for inv in INVENTORIES for run in stage_runs(inv).values() for o in run.objects]
    written = {
        (o["apiVersion"].split("/")[0], o["kind"])
        for o in objects
        if "/" in o["apiVersion"] and o["apiVersion"].split("/")[0] not in built_in
    }
    assert {kind for _g, kind in written} >= {
        "CephCluster",
        "PerconaServerMongoDB",
        "ScheduledSparkApplication",
        "SparkApplication",
        "ServiceMonitor",
    }
    assert written - served == set()


def test_offline_crd_reading_equals_what_helm_installs(crds):
    """tests/helpers/kube_schema.py validates offline against chart_crds; it reads what helm installs."""
    for name, (render, crd) in crds.items():
        offline = chart_crds.crd_for(crd["spec"]["group"], crd["spec"]["names"]["kind"])
        assert offline is not None, f"{name} ({render.crd_sources[name]}) not found offline"
        assert offline["spec"] == crd["spec"], f"{name}: offline reading differs from helm's ({render.crd_sources[name]})"
