"""Render of the storage and mongo stages: schemas, policies, and agreement with the capacity plan."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from datacloud import capacity
from datacloud.inventory import Inventory
from datacloud.render import Rendered, render_all
from datacloud.stages import mongo, storage
from tests.helpers import datalayer_inventories as inventories
from tests.helpers.kube_schema import containers, validate_object

INVENTORIES = {
    "reference": inventories.reference,
    "three-nodes": inventories.three_nodes,
    "local-path": inventories.local_path,
}


@pytest.fixture(scope="module", params=list(INVENTORIES))
def case(request) -> tuple[Inventory, Rendered, Rendered]:
    inv = INVENTORIES[request.param]()
    return inv, storage.render(inv), mongo.render(inv)


def _objects(*rendered: Rendered) -> list[dict[str, Any]]:
    return [o for r in rendered for o in r.all_objects()]


def _kind(rendered: Rendered, kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered.all_objects() if o["kind"] == kind]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every mapping entry, recursively."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _cr_resources(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Pod resources in a custom resource (not the storage size of a volume claim)."""
    return [
        (f"{p}/{k}", v)
        for p, k, v in _walk(obj.get("spec", {}))
        if k == "resources" and isinstance(v, dict) and "requests" in v and "storage" not in v["requests"]
    ]


def _mib(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def _milli(quantity: str) -> int:
    return int(quantity.removesuffix("m"))


# --- schemas ---


def test_every_object_validates(case):
    inv, st, mo = case
    objects = _objects(st, mo)
    assert objects
    for obj in objects:
        validate_object(obj, inv.cluster.kubernetes_version)


def test_chart_crds_reject_what_the_api_server_would():
    """The upstream CRDs are not rubber stamps: a misspelt field, a wrong type and a missing
    required field fail offline as they fail on the API server (tests/apiserver)."""
    inv = inventories.reference()
    cluster = next(o for o in storage.render(inv).all_objects() if o["kind"] == "CephCluster")
    bad = yaml.safe_load(yaml.safe_dump(cluster))
    bad["spec"]["storage"]["useAllDevice"] = False
    with pytest.raises(AssertionError, match="useAllDevice"):
        validate_object(bad, inv.cluster.kubernetes_version)
    bad = yaml.safe_load(yaml.safe_dump(cluster))
    bad["spec"]["mon"]["count"] = "three"
    with pytest.raises(AssertionError, match="spec/mon/count"):
        validate_object(bad, inv.cluster.kubernetes_version)
    psmdb = next(o for o in mongo.render(inv).all_objects() if o["kind"] == "PerconaServerMongoDB")
    for feature in ("backup", "pmm"):  # the operator's CRD wants an image even for a feature that is off
        bad = yaml.safe_load(yaml.safe_dump(psmdb))
        del bad["spec"][feature]["image"]
        with pytest.raises(AssertionError, match=f"spec/{feature}: 'image' is a required property"):
            validate_object(bad, inv.cluster.kubernetes_version)


# --- storage ---


def test_ceph_lists_every_disk_explicitly_with_mons_and_replication():
    for make in (inventories.reference, inventories.three_nodes):
        inv = make()
        rendered = storage.render(inv)
        (cluster,) = _kind(rendered, "CephCluster")
        spec = cluster["spec"]
        assert spec["storage"]["useAllDevices"] is False
        assert spec["storage"]["useAllNodes"] is False
        listed = {n["name"]: [d["name"] for d in n["devices"]] for n in spec["storage"]["nodes"]}
        assert listed == {n.name: [d.device.removeprefix("/dev/") for d in n.ceph_disks] for n in inv.ceph_nodes}
        assert spec["mon"] == {"count": 3, "allowMultiplePerNode": False}
        assert inv.mon_count == 3
        s = inv.components.storage
        assert spec["cephConfig"]["osd"]["osd_memory_target"] == str(s.osd_memory_target_mb * 1024 * 1024)
        assert spec["resources"]["osd"]["requests"]["memory"] == f"{s.osd.memory_mb}Mi"
        sizes = [v["size"] for _, k, v in _walk(rendered.all_objects()) if k == "replicated"]
        assert sizes
        assert set(sizes) == {inv.ceph_replication} == {3}


def test_reference_cluster_gets_both_classes_block_is_default():
    rendered = storage.render(inventories.reference())
    classes = {o["metadata"]["name"]: o for o in _kind(rendered, "StorageClass")}
    assert set(classes) == {"rook-ceph-block", "rook-cephfs"}
    default = [
        n
        for n, o in classes.items()
        if o["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    assert default == ["rook-ceph-block"]
    assert classes["rook-ceph-block"]["provisioner"] == "rook-ceph.rbd.csi.ceph.com"
    assert classes["rook-cephfs"]["provisioner"] == "rook-ceph.cephfs.csi.ceph.com"
    assert classes["rook-cephfs"]["parameters"]["fsName"] == _kind(rendered, "CephFilesystem")[0]["metadata"]["name"]
    assert classes["rook-ceph-block"]["parameters"]["pool"] == _kind(rendered, "CephBlockPool")[0]["metadata"]["name"]
    assert [r.chart for r in rendered.releases] == ["rook-ceph"]
    assert rendered.releases[0].version.startswith("v1.")


def test_few_disks_fall_back_to_local_path_and_say_so():
    inv = inventories.local_path()
    assert inv.storage_backend == "local-path"
    assert any("local-path" in w for w in inv.warnings)
    rendered = storage.render(inv)
    kinds = {o["kind"] for o in rendered.all_objects()}
    assert not {"CephCluster", "CephBlockPool", "CephFilesystem"} & kinds
    assert rendered.releases == []
    (sc,) = _kind(rendered, "StorageClass")
    assert sc["metadata"]["name"] == "local-path"
    assert sc["provisioner"] == "rancher.io/local-path"
    assert storage.storage_classes(inv) == {"rwo": "local-path", "rwx": None}
    (psmdb,) = _kind(mongo.render(inv), "PerconaServerMongoDB")
    assert {rs["volumeSpec"]["persistentVolumeClaim"]["storageClassName"] for rs in psmdb["spec"]["replsets"]} == {"local-path"}


def test_csi_container_shares_add_up_to_the_pod_settings():
    s = inventories.reference().components.storage
    for key, items in storage.csi_container_resources(s).items():
        pod = s.csi_provisioner if "Provisioner" in key else s.csi_plugin
        assert sum(_mib(i["resource"]["requests"]["memory"]) for i in items) == pod.memory_mb
        assert sum(_milli(i["resource"]["requests"]["cpu"]) for i in items) == pod.cpu_m
        assert sum(_mib(i["resource"]["limits"]["memory"]) for i in items) == pod.limit_mb
    values = storage.operator_values(s)
    for key in storage.CSI_PODS:
        assert yaml.safe_load(values["csi"][key]) == storage.csi_container_resources(s)[key]


def test_probe_is_a_claim_and_a_pod_with_resources():
    objs = storage.probe_objects("rook-cephfs", "ReadWriteMany", "probe-rwx-abc123", "default")
    assert [o["kind"] for o in objs] == ["PersistentVolumeClaim", "Pod"]
    for obj in objs:
        validate_object(obj, "1.34.2")
    assert objs[0]["spec"]["storageClassName"] == "rook-cephfs"
    assert objs[1]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "probe-rwx-abc123"


# --- mongo ---


def test_psmdb_topology_follows_the_inventory(case):
    inv, _, mo = case
    m = inv.components.mongo
    (psmdb,) = _kind(mo, "PerconaServerMongoDB")
    spec = psmdb["spec"]
    assert [rs["name"] for rs in spec["replsets"]] == [f"rs{i}" for i in range(m.shards)]
    assert {rs["size"] for rs in spec["replsets"]} == {m.replicas}
    assert spec["sharding"]["enabled"] is True
    assert spec["sharding"]["balancer"]["enabled"] is True
    assert spec["sharding"]["configsvrReplSet"]["size"] == m.config_replicas == 3
    assert spec["sharding"]["mongos"]["size"] == m.mongos
    assert spec["image"].startswith("percona/percona-server-mongodb:8.0.")
    for rs in spec["replsets"]:
        assert rs["volumeSpec"]["persistentVolumeClaim"]["storageClassName"] == storage.storage_classes(inv)["rwo"]
    assert [r.chart for r in mo.releases] == ["psmdb-operator-crds", "psmdb-operator"]


def test_mongo_auth_and_keyfile_on():
    inv = inventories.reference()
    (psmdb,) = _kind(mongo.render(inv), "PerconaServerMongoDB")
    spec = psmdb["spec"]
    # TLS between members (issue 12, item 8): the operator's own certificates, x509 member auth;
    # the keyFile Secret is still named (the operator requires it).
    assert spec["secrets"]["keyFile"] == mongo.KEYFILE_SECRET
    assert spec["tls"] == {"mode": "preferTLS"}
    assert "tls" not in spec["unsafeFlags"]  # the operator's guard against TLS off is not bypassed
    assert spec["secrets"]["users"] == mongo.USERS_SECRET
    text = yaml.safe_dump(psmdb)
    assert "noauth" not in text.lower()
    assert "authorization: disabled" not in text
    users = {u["name"]: u for u in spec["users"]}
    assert set(users) == {mongo.ADMIN_USER, mongo.APP_USER, mongo.MONITOR_USER}
    assert users[mongo.APP_USER]["roles"] == [{"name": "readWrite", "db": "datacloud"}]
    assert {"name": "clusterMonitor", "db": "admin"} in users[mongo.MONITOR_USER]["roles"]
    for user in users.values():
        assert set(user["passwordSecretRef"]) == {"name", "key"}


def test_wiredtiger_cache_follows_the_memory_limit():
    for limit, expected in ((1024, 0.25), (2048, 0.5), (3072, 1.0)):
        inv = inventories.with_mongo(shard={"cpu_m": 300, "memory_mb": 768, "limit_memory_mb": limit})
        (psmdb,) = _kind(mongo.render(inv), "PerconaServerMongoDB")
        rs = psmdb["spec"]["replsets"][0]
        ratio = rs["storage"]["wiredTiger"]["engineConfig"]["cacheSizeRatio"]
        limit_bytes = _mib(rs["resources"]["limits"]["memory"]) * 2**20
        # The operator's rule: ratio x (limit - 1 GiB), at least 0.25 GB.
        assert max(0.25, ratio * (limit_bytes - 2**30) / 2**30) == expected == inv.components.mongo.wiredtiger_cache_gb


def test_node_port_only_when_the_inventory_asks():
    (default,) = _kind(mongo.render(inventories.reference()), "PerconaServerMongoDB")
    assert default["spec"]["sharding"]["mongos"]["expose"] == {"type": "ClusterIP"}
    inv = inventories.with_mongo(node_port=32017)
    (psmdb,) = _kind(mongo.render(inv), "PerconaServerMongoDB")
    assert psmdb["spec"]["sharding"]["mongos"]["expose"] == {"type": "NodePort", "nodePort": 32017}
    assert mongo.app_uri(inv, "pw") == "mongodb://datacloud:pw@192.168.1.1:32017/datacloud?authSource=admin"


# --- policies over everything both stages render ---


def test_no_literal_password_anywhere(case):
    inv, st, mo = case
    docs = _objects(st, mo) + [r.values for r in st.releases + mo.releases]
    assert not [o for o in _objects(st, mo) if o["kind"] == "Secret"], "Secrets are created at run time, never rendered"
    for doc in docs:
        for path, key, value in _walk(doc):
            lowered = str(key).lower()
            if "password" in lowered or lowered in {"pwd", "passwd", "keyfile"}:
                assert not isinstance(value, str | int) or (key == "keyFile" and value == mongo.KEYFILE_SECRET), f"{path}/{key}"
            if isinstance(value, str):
                assert not re.search(r"mongodb(\+srv)?://[^/\s]*:[^/\s]*@", value), f"{path}/{key} holds a URI with credentials"
    # Rendering is pure: no generated value can sneak in.
    assert _objects(storage.render(inv), mongo.render(inv)) == _objects(st, mo)


def test_requests_and_memory_limits_everywhere(case):
    _inv, st, mo = case
    seen = 0
    for obj in _objects(st, mo):
        for c in containers(obj):
            r = c.get("resources") or {}
            assert {"cpu", "memory"} <= set(r.get("requests", {})), f"{obj['kind']}/{c['name']} lacks requests"
            assert "memory" in r.get("limits", {}), f"{obj['kind']}/{c['name']} lacks a memory limit"
            seen += 1
        for path, r in _cr_resources(obj):
            assert {"cpu", "memory"} <= set(r["requests"]), f"{obj['kind']} {path}"
            assert "memory" in r["limits"], f"{obj['kind']} {path}"
            seen += 1
    for rel in st.releases + mo.releases:
        if rel.values:
            r = rel.values["resources"]
            assert {"cpu", "memory"} <= set(r["requests"]), rel.name
            assert "memory" in r["limits"], rel.name
    assert seen >= 3


def test_replica_set_members_on_different_nodes_and_disruption_budgets():
    inv = inventories.reference()
    (psmdb,) = _kind(mongo.render(inv), "PerconaServerMongoDB")
    spec = psmdb["spec"]
    groups = [*spec["replsets"], spec["sharding"]["configsvrReplSet"], spec["sharding"]["mongos"]]
    for group in groups:
        assert group["affinity"] == {"antiAffinityTopologyKey": "kubernetes.io/hostname"}
        assert group["podDisruptionBudget"] == {"maxUnavailable": 1}
    (cluster,) = _kind(storage.render(inv), "CephCluster")
    assert cluster["spec"]["mon"]["allowMultiplePerNode"] is False
    assert cluster["spec"]["disruptionManagement"]["managePodBudgets"] is True


# --- capacity: the render requests exactly what the plan counts ---


def _storage_requests(inv: Inventory) -> tuple[int, int]:
    rendered = storage.render(inv)
    if inv.storage_backend == "local-path":
        (dep,) = [o for o in rendered.all_objects() if o["kind"] == "Deployment"]
        (c,) = containers(dep)
        return _milli(c["resources"]["requests"]["cpu"]), _mib(c["resources"]["requests"]["memory"])
    (cluster,) = _kind(rendered, "CephCluster")
    (fs,) = _kind(rendered, "CephFilesystem")
    res = cluster["spec"]["resources"]
    nodes = len(inv.nodes)
    osds = sum(len(n["devices"]) for n in cluster["spec"]["storage"]["nodes"])
    counts = {"mon": cluster["spec"]["mon"]["count"], "mgr": cluster["spec"]["mgr"]["count"], "osd": osds}
    counts["exporter"] = len(cluster["spec"]["storage"]["nodes"])
    mds = fs["spec"]["metadataServer"]
    pods = [(res[k], n) for k, n in counts.items()]
    pods.append((mds["resources"], mds["activeCount"] * (2 if mds["activeStandby"] else 1)))
    values = rendered.releases[0].values
    pods.append((values["resources"], 1))
    cpu = sum(_milli(r["requests"]["cpu"]) * n for r, n in pods)
    mem = sum(_mib(r["requests"]["memory"]) * n for r, n in pods)
    for key in storage.CSI_PODS:
        per_pod = yaml.safe_load(values["csi"][key])
        n = values["csi"]["provisionerReplicas"] if "Provisioner" in key else nodes
        cpu += n * sum(_milli(i["resource"]["requests"]["cpu"]) for i in per_pod)
        mem += n * sum(_mib(i["resource"]["requests"]["memory"]) for i in per_pod)
    return cpu, mem


def _mongo_requests(inv: Inventory) -> tuple[int, int]:
    rendered = mongo.render(inv)
    (psmdb,) = _kind(rendered, "PerconaServerMongoDB")
    spec = psmdb["spec"]
    groups = [*spec["replsets"], spec["sharding"]["configsvrReplSet"], spec["sharding"]["mongos"]]
    pods = [(g["resources"], g["size"]) for g in groups]
    pods += [(r.values["resources"], 1) for r in rendered.releases if r.values]
    return sum(_milli(r["requests"]["cpu"]) * n for r, n in pods), sum(_mib(r["requests"]["memory"]) * n for r, n in pods)


def test_rendered_requests_equal_the_capacity_catalogue(case):
    inv, _, _ = case
    plan = capacity.plan(inv)
    assert _storage_requests(inv) == plan.by_component["storage"]
    assert _mongo_requests(inv) == plan.by_component["mongo"]


def test_reference_cluster_fits_with_budget_to_spare():
    plan = capacity.plan(inventories.reference())
    assert plan.ok, plan.problems
    assert plan.share_of("storage", "mongo") <= 0.45
    assert plan.platform_share <= 0.60
    assert capacity.plan(inventories.three_nodes()).ok


def test_thesis_four_shard_layout_does_not_fit_eight_gigabyte_nodes():
    plan = capacity.plan(inventories.thesis_four_shards())
    assert not plan.ok
    assert plan.share_of("storage", "mongo") > 0.45
    assert any("budget" in p for p in plan.problems)


def test_dev_render_writes_both_stages(tmp_path):
    results = render_all(inventories.reference(), tmp_path)
    assert {p.name for p in (tmp_path / "storage").iterdir()} >= {
        "ceph-cluster.yaml",
        "pools.yaml",
        "storageclasses.yaml",
        "values-rook-ceph.yaml",
    }
    assert {p.name for p in (tmp_path / "mongo").iterdir()} >= {"cluster.yaml", "values-psmdb-operator.yaml"}
    charts = yaml.safe_load((tmp_path / "charts.yaml").read_text())["releases"]
    assert {(c["stage"], c["chart"]) for c in charts} >= {("storage", "rook-ceph"), ("mongo", "psmdb-operator")}
    kinds = sorted(o["kind"] for o in results["mongo"].all_objects())
    assert kinds == ["Namespace", *["NetworkPolicy"] * 4, "PerconaServerMongoDB"]


def test_local_path_helper_pod_and_config_are_valid():
    (cm,) = [o for o in storage.render(inventories.local_path()).all_objects() if o["kind"] == "ConfigMap"]
    helper = yaml.safe_load(cm["data"]["helperPod.yaml"])
    validate_object(helper, "1.34.2")
    (c,) = containers(helper)
    assert set(c["resources"]) == {"requests", "limits"}
    assert json.loads(cm["data"]["config.json"])["nodePathMap"][0]["paths"] == [storage.LOCAL_PATH_DIR]
