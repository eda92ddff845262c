"""The storage and mongo stage steps driven through a recording Kube double: order, idempotence, waits."""

from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace

import pytest

from datacloud import connections
from datacloud.errors import TransientError
from datacloud.render import versions
from datacloud.stages import mongo, storage
from tests.helpers import datalayer_inventories as inventories
from tests.helpers.kube_double import KubeDoubleState, StageContextDouble


@pytest.fixture
def fake_time(monkeypatch):
    """A clock that advances only when the code sleeps."""
    now = [0.0]
    fake = SimpleNamespace(monotonic=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(storage, "time", fake)
    return now


def _ctx(inv=None, dry_run=False, state=None):
    return StageContextDouble(inv or inventories.reference(), state or KubeDoubleState(), dry_run)


# --- storage ---


def test_storage_apply_order_then_unchanged():
    ctx = _ctx()
    first = storage.step_apply(ctx)
    assert ctx.state.calls == [
        ("apply", "Namespace/rook-ceph"),
        ("helm", "rook-ceph", "v1.19.7"),
        ("rollout", "deployment", "rook-ceph-operator"),
        ("apply", "NetworkPolicy/rook-ceph/default-deny"),
        ("apply", "NetworkPolicy/rook-ceph/allow-same-namespace-dns-and-api"),
        ("apply", "NetworkPolicy/rook-ceph/allow-inside-cluster"),
        ("apply", "CephCluster/rook-ceph/rook-ceph"),
        ("apply", "CephBlockPool/rook-ceph/replicapool"),
        ("apply", "CephFilesystem/rook-ceph/cephfs"),
        ("apply", "StorageClass/rook-ceph-block"),
        ("apply", "StorageClass/rook-cephfs"),
    ]
    assert len(first["changes"]) == 10
    assert first["backend"] == "rook-ceph"
    ctx.state.calls.clear()
    assert storage.step_apply(ctx)["changes"] == []
    assert [c[0] for c in ctx.state.calls] == ["apply", "helm", "rollout"] + ["apply"] * 8


def test_storage_dry_run_changes_nothing():
    ctx = _ctx(dry_run=True)
    result = storage.step_apply(ctx)
    assert result["dry_run"] is True
    assert result["changes"]
    assert ctx.state.objects == {}
    assert ctx.state.releases == {}
    assert not [c for c in ctx.state.calls if c[0] == "rollout"]


def test_local_path_fallback_applies_the_provisioner(caplog):
    ctx = _ctx(inventories.local_path())
    with caplog.at_level(logging.INFO):
        result = storage.step_apply(ctx)
    assert result["backend"] == "local-path"
    assert not [c for c in ctx.state.calls if c[0] == "helm"]
    assert ctx.state.calls[-1] == ("rollout", "deployment", "local-path-provisioner")
    assert "StorageClass/local-path" in ctx.state.objects
    assert any("falls back to the local-path provisioner" in r.getMessage() for r in caplog.records)
    assert storage.step_health(ctx)["health"] == "local-path (no Ceph)"


def _ceph(health=None, details=None, phase="Ready"):
    status = {"phase": phase}
    if health:
        status["ceph"] = {"health": health, "details": details or {}}
    return {"kind": "CephCluster", "status": status}


def test_health_waits_for_ok(fake_time, caplog):
    ctx = _ctx()
    ctx.state.status[("cephcluster", "rook-ceph")] = [
        _ceph(phase="Progressing"),
        _ceph("HEALTH_ERR", {"MON_DOWN": {"message": "1/3 mons down"}}),
        _ceph("HEALTH_OK"),
    ]
    with caplog.at_level(logging.INFO):
        result = storage.step_health(ctx)
    assert result["health"] == "HEALTH_OK"
    assert result["changes"] == []
    # The allow-list is logged, so a reader knows which warnings were accepted.
    assert any("HEALTH_WARN allowed for MON_DISK_LOW" in r.getMessage() for r in caplog.records)


def test_health_warn_on_the_allow_list_is_accepted_and_said():
    ok, state = storage.ceph_health(_ceph("HEALTH_WARN", {"MON_DISK_LOW": {"message": "mon a is low on space"}}))
    assert ok
    assert state.startswith("HEALTH_WARN accepted: MON_DISK_LOW (")


def test_health_warn_off_the_list_times_out_with_the_checks(fake_time, caplog):
    ctx = _ctx()
    warn = _ceph("HEALTH_WARN", {"OSD_DOWN": {"message": "1 osds down"}, "MON_DISK_LOW": {"message": "low"}})
    ctx.state.status[("cephcluster", "rook-ceph")] = [warn]
    with caplog.at_level(logging.INFO), pytest.raises(TransientError) as err:
        storage.step_health(ctx)
    assert "not ready after 1800s" in str(err.value)
    assert "OSD_DOWN: 1 osds down" in str(err.value)
    waiting = [r for r in caplog.records if "waiting" in r.getMessage()]
    # 1800 s of polling every 5 s: progress at most every 15 s.
    assert 100 <= len(waiting) <= 1800 // 15 + 1


def test_a_wait_that_times_out_says_why_the_pods_are_not_ready(fake_time):
    """The timeout's error carries what kubelet and the scheduler said (Kube.why_waiting over `get pods,nodes`):
    the node under disk pressure, the evicted and the unschedulable pod, not only "not ready after 1800s"."""
    ctx = _ctx()
    ctx.state.status[("cephcluster", "rook-ceph")] = [_ceph(phase="Progressing")]
    pressure = {"type": "DiskPressure", "status": "True"}
    ctx.state.listed = {
        "nodes": [
            {"metadata": {"name": "n2"}, "status": {"conditions": [{"type": "Ready", "status": "True"}, pressure]}},
            {"metadata": {"name": "n3"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        ],
        "pods": [
            {"metadata": {"name": "rook-ceph-mon-a"}, "status": {"phase": "Failed", "reason": "Evicted",
                                                                 "message": "The node had condition: [DiskPressure]. "}},
            {"metadata": {"name": "rook-ceph-mon-b"}, "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/disk-pressure: }."}]}},
            {"metadata": {"name": "rook-ceph-mgr-a"}, "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}]}},
        ],
    }  # fmt: skip
    with pytest.raises(TransientError) as err:
        storage.step_health(ctx)
    assert str(err.value).endswith(
        "; why: node n2: DiskPressure; rook-ceph-mon-a Evicted: The node had condition: [DiskPressure].; "
        "rook-ceph-mon-b unschedulable: 0/3 nodes are available: 1 node(s) had untolerated taint "
        "{node.kubernetes.io/disk-pressure: }."
    )
    assert ("kubectl", "get", "pods", "--namespace", "rook-ceph", "--output", "json") in ctx.state.calls


def test_progress_lines_are_rate_limited():
    now = [0.0]
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(now[0])
    logger = logging.getLogger("datacloud.stages.storage")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    states = iter([(False, f"s{i}") for i in range(20)] + [(True, "done")])
    try:
        storage.wait_until(
            "X", lambda: next(states), 600, interval_s=4, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
        )
    finally:
        logger.removeHandler(handler)
    waiting = lines[:-1]  # the last line says ready
    gaps = [b - a for a, b in itertools.pairwise(waiting)]
    assert len(waiting) >= 4
    assert all(g >= 15 for g in gaps), lines


def test_prove_binds_writes_and_cleans_up():
    ctx = _ctx()
    result = storage.step_prove(ctx)
    assert result["proven"] == ["rook-ceph-block", "rook-cephfs"]
    assert result["changes"] == []
    applied = [c[1] for c in ctx.state.calls if c[0] == "apply"]
    assert [a.split("/")[0] for a in applied] == ["PersistentVolumeClaim", "Pod"] * 2
    assert not [o for o in ctx.state.objects if "datacloud-probe" in o], "probe objects must be deleted"
    deletes = [c for c in ctx.state.calls if c[:2] == ("kubectl", "delete")]
    assert len(deletes) == 2


def test_prove_failure_still_cleans_up():
    state = KubeDoubleState(claim_phase="Pending")
    ctx = _ctx(state=state)
    with pytest.raises(
        TransientError, match=r"storage class rook-ceph-block did not serve a ReadWriteOnce claim .*claim Pending"
    ):
        storage.step_prove(ctx)
    assert not [o for o in ctx.state.objects if "datacloud-probe" in o]


def test_prove_local_path_has_no_rwx():
    ctx = _ctx(inventories.local_path())
    assert storage.step_prove(ctx)["proven"] == ["local-path"]


# --- mongo ---


PSMDB = versions()["mongo"]["psmdb_chart_version"]


def test_mongo_apply_creates_secrets_once_then_unchanged():
    ctx = _ctx()
    first = mongo.step_apply(ctx)
    secret_ids = {o for o in ctx.state.objects if o.startswith("Secret/")}
    assert secret_ids == {f"Secret/mongo/{n}" for n in mongo.generate_secrets()}
    order = [c for c in ctx.state.calls if c[0] in ("helm", "rollout") or (c[0] == "apply" and not c[1].startswith("Secret/"))]
    assert order == [
        ("apply", "Namespace/mongo"),
        # the policies before anything runs in the namespace
        ("apply", "NetworkPolicy/mongo/default-deny"),
        ("apply", "NetworkPolicy/mongo/allow-same-namespace-dns-and-api"),
        ("apply", "NetworkPolicy/mongo/allow-clients-to-mongos"),
        ("apply", "NetworkPolicy/mongo/allow-exporters-and-nodes-to-members"),
        ("helm", "psmdb-operator-crds", PSMDB),
        ("helm", "psmdb-operator", PSMDB),
        ("rollout", "deployment", "psmdb-operator"),
        ("apply", "PerconaServerMongoDB/mongo/datacloud-mongo"),
    ]
    assert ctx.state.calls.index(("apply", "NetworkPolicy/mongo/default-deny")) < min(
        i for i, c in enumerate(ctx.state.calls) if c[0] == "apply" and c[1].startswith("Secret/")
    )
    assert len(first["changes"]) == 1 + 4 + len(secret_ids) + 2 + 1
    before = {k: v["stringData"] for k, v in ctx.state.objects.items() if k.startswith("Secret/")}
    second = mongo.step_apply(ctx)
    assert second["changes"] == []
    after = {k: v["stringData"] for k, v in ctx.state.objects.items() if k.startswith("Secret/")}
    assert after == before, "a re-run must never regenerate passwords or the keyFile"


def test_mongo_apply_changes_no_secret_in_its_result():
    ctx = _ctx()
    result = mongo.step_apply(ctx)
    values = [v for o in ctx.state.objects.values() if o["kind"] == "Secret" for v in o["stringData"].values()]
    text = repr(result)
    assert values
    assert not [v for v in values if len(v) > 8 and v in text]


def test_mongo_ready_waits_for_the_operator(fake_time):
    ctx = _ctx()
    ctx.state.status[("perconaservermongodb", "datacloud-mongo")] = [
        None,
        {"status": {"state": "initializing", "replsets": {"rs0": {"ready": 1, "size": 3}}, "mongos": {"ready": 0, "size": 2}}},
        {"status": {"state": "ready", "replsets": {"rs0": {"ready": 3, "size": 3}, "cfg": {"ready": 3, "size": 3}}}},
    ]
    result = mongo.step_ready(ctx)
    assert result["state"].startswith("state ready, cfg 3/3, rs0 3/3")


def test_mongo_ready_timeout_is_transient(fake_time):
    ctx = _ctx()
    ctx.state.status[("perconaservermongodb", "datacloud-mongo")] = [{"status": {"state": "error", "message": "PVC pending"}}]
    with pytest.raises(TransientError, match="last state: state error, PVC pending"):
        mongo.step_ready(ctx)


def test_connection_written_only_when_it_differs(monkeypatch):
    ctx = _ctx()
    mongo.step_apply(ctx)
    store: dict[str, dict] = {}
    writes = []

    def write(conn_id, fields):
        writes.append(conn_id)
        store[conn_id] = dict(fields)

    monkeypatch.setattr(connections, "get", store.get)
    monkeypatch.setattr(connections, "write_connection", write)
    assert mongo.step_connection(ctx)["changes"] == ["connection datacloud_mongo stored"]
    assert mongo.step_connection(ctx)["changes"] == []
    assert writes == ["datacloud_mongo"]
    stored = store["datacloud_mongo"]
    app_password = ctx.state.objects["Secret/mongo/datacloud-mongo-app"]["stringData"]["password"]
    assert stored == mongo.airflow_connection(ctx.inv, app_password)
    assert (stored["login"], stored["schema"], stored["conn_type"]) == ("datacloud", "datacloud", "mongo")


def test_dry_run_on_an_empty_cluster_plans_without_diffing_what_cannot_exist():
    for step, inv in (
        (storage.step_apply, inventories.reference()),
        (storage.step_apply, inventories.local_path()),
        (mongo.step_apply, None),
    ):
        ctx = _ctx(inv, dry_run=True)
        result = step(ctx)
        applied = [c[1] for c in ctx.state.calls if c[0] == "apply"]
        assert all(a.startswith("Namespace/") for a in applied), applied
        assert any(c.startswith("would apply ") for c in result["changes"])
        assert ctx.state.objects == {}


def test_mongo_dry_run_names_secrets_without_creating_them():
    ctx = _ctx(dry_run=True)
    result = mongo.step_apply(ctx)
    assert "Secret/mongo/datacloud-mongo-keyfile would be created with generated values" in result["changes"]
    assert not [o for o in ctx.state.objects if o.startswith("Secret/")]
