"""health.py probes with a recorded-answers Kube double (no cluster here) and fake state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from datacloud import health, platform_state
from datacloud.config import REPO_ROOT
from datacloud.health import HealthContext, PlatformUnhealthy

EXAMPLE = str(REPO_ROOT / "inventory.example.yaml")  # master, slave2..slave5; mongo shards: 2
NODES = ["master", "slave2", "slave3", "slave4", "slave5"]


class KubeAnswersDouble:
    """Test double for datacloud.kube.Kube: answers get_json from a dict, records the calls."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.calls: list[tuple] = []
        self.closed = False

    def get_json(self, kind, name=None, *, namespace=None, selector=None):
        self.calls.append((kind, name, namespace, selector))
        return self.answers.get((kind, name, namespace))

    def close(self):
        self.closed = True


def node(name, ready="True", reason="KubeletReady", message=""):
    return {"metadata": {"name": name},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": ready, "reason": reason, "message": message}]}}


def workload(kind, name, want, ready):
    return {"kind": kind, "metadata": {"name": name}, "spec": {"replicas": want}, "status": {"readyReplicas": ready}}


def healthy_cluster() -> dict:
    return {
        ("nodes", None, None): {"items": [node(n) for n in NODES]},
        ("cephcluster", None, "rook-ceph"): {"items": [{"status": {"ceph": {"health": "HEALTH_OK"}}}]},
        ("perconaservermongodb", "datacloud-mongo", "mongo"): {"status": {
            "state": "ready",
            "replsets": {"cfg": {"ready": 3, "size": 3, "status": "ready"}, "rs0": {"ready": 3, "size": 3, "status": "ready"},
                         "rs1": {"ready": 3, "size": 3, "status": "ready"}},
            "mongos": {"ready": 2, "size": 2, "status": "ready"}}},
        ("deployments", None, "spark-operator"): {"items": [workload("Deployment", "spark-operator-controller", 1, 1),
                                                            workload("Deployment", "spark-operator-webhook", 1, 1)]},
        ("deployment", "hub", "jupyter"): workload("Deployment", "hub", 1, 1),
        ("statefulsets", None, "monitoring"): {"items": [workload("StatefulSet", "prometheus-kps-prometheus", 1, 1)]},
    }


@pytest.fixture
def state_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "state.json"
    monkeypatch.setenv("DATACLOUD_PLATFORM_STATE", str(path))
    return path


def provision_all():
    for stage in ("kubernetes", "storage", "spark", "jupyter", "monitoring"):
        platform_state.record_stage(stage)
    platform_state.record_stage("mongo", facts={"shards": 2})


def ctx_for(kube: KubeAnswersDouble, env=None) -> HealthContext:
    return HealthContext(state=platform_state.load_state(), env=env or {}, inventory_path=EXAMPLE,
                         kube_factory=lambda inv: kube, mongo_uri=lambda: None)


def by_probe(findings):
    return {f.probe: f for f in findings}


def test_nothing_provisioned_everything_cluster_side_is_skipped(state_path):
    kube = KubeAnswersDouble({})
    found = by_probe(health.run_probes(ctx_for(kube)))
    assert {k: f.status for k, f in found.items()} == {
        "airflow": "skipped", "mongodb": "skipped", "spark_master": "skipped", "nodes": "skipped", "ceph": "skipped",
        "mongo_shards": "skipped", "spark_operator": "skipped", "jupyterhub": "skipped", "prometheus": "skipped"}
    assert found["nodes"].detail == "Kubernetes is not provisioned (the kubernetes stage has not run)"
    assert found["spark_master"].detail == "the Spark target is local, not standalone"
    assert kube.calls == []  # nothing provisioned: the cluster is never contacted


def test_healthy_cluster_passes(state_path, caplog):
    caplog.set_level(logging.INFO, logger="datacloud.health")
    provision_all()
    kube = KubeAnswersDouble(healthy_cluster())
    summary = health.check(ctx=ctx_for(kube))
    assert {k for k, v in summary.items() if v == "ok"} == {"nodes", "ceph", "mongo_shards", "spark_operator", "jupyterhub",
                                                             "prometheus"}
    assert kube.closed
    assert ("deployments", None, "spark-operator", "app.kubernetes.io/name=spark-operator") in kube.calls
    assert "Health | 6 probe(s) ok, 3 skipped" in caplog.text


def test_every_problem_is_one_sentence(state_path):
    provision_all()
    answers = healthy_cluster()
    answers[("nodes", None, None)] = {"items": [node("master"), node("slave2", "False", "KubeletNotReady", "PLEG is not healthy"),
                                                node("slave3"), node("slave4", "Unknown", "NodeStatusUnknown")]}
    answers[("cephcluster", None, "rook-ceph")] = {"items": [{"status": {"ceph": {
        "health": "HEALTH_ERR", "details": {"OSD_DOWN": {"message": "2 osds down"}}}}}]}
    mongo = answers[("perconaservermongodb", "datacloud-mongo", "mongo")]["status"]
    del mongo["replsets"]["rs1"]
    mongo["replsets"]["rs0"] = {"ready": 2, "size": 3, "status": "initializing"}
    mongo["mongos"] = {"ready": 0, "size": 2}
    answers[("deployments", None, "spark-operator")]["items"][1]["status"]["readyReplicas"] = 0
    del answers[("deployment", "hub", "jupyter")]
    answers[("statefulsets", None, "monitoring")] = {"items": []}
    with pytest.raises(PlatformUnhealthy) as exc:
        health.check(ctx=ctx_for(KubeAnswersDouble(answers)))
    assert str(exc.value) == (
        "10 problem(s): "
        "node slave2 (192.168.1.2) is NotReady (KubeletNotReady: PLEG is not healthy). "
        "node slave4 (192.168.1.4) is NotReady (NodeStatusUnknown). "
        "node slave5 (192.168.1.5) is not a member of the cluster. "
        "Ceph reports HEALTH_ERR (OSD_DOWN: 2 osds down). "
        "mongos lists 1 shard(s), expected 2. "
        "MongoDB replica set rs0 has 2 of 3 members ready. "
        "no mongos is ready (0 of 2). "
        "spark-operator deployment spark-operator-webhook has 0 of 1 replicas ready. "
        "the JupyterHub hub deployment is missing in namespace jupyter. "
        "no Prometheus workload was found."
    )


def test_ceph_warn_is_logged_not_failed_and_local_path_skips(state_path, caplog):
    platform_state.record_stage("storage")
    answers = {("cephcluster", None, "rook-ceph"): {"items": [{"status": {"ceph": {
        "health": "HEALTH_WARN", "details": {"POOL_NO_REDUNDANCY": {"message": "1 pool(s) have no replicas"}}}}}]}}
    found = by_probe(health.run_probes(ctx_for(KubeAnswersDouble(answers))))
    assert found["ceph"].status == "ok"
    assert "HEALTH_WARN (POOL_NO_REDUNDANCY: 1 pool(s) have no replicas)" in caplog.text
    platform_state.record_stage("storage", facts={"backend": "local-path"})
    found = by_probe(health.run_probes(ctx_for(KubeAnswersDouble({}))))
    assert found["ceph"].status == "skipped"


def test_a_probe_that_crashes_is_a_problem_not_a_crash(state_path):
    platform_state.record_stage("kubernetes")

    class Broken(KubeAnswersDouble):
        def get_json(self, *a, **k):
            raise ConnectionResetError("ssh channel closed")

    found = by_probe(health.run_probes(ctx_for(Broken({}))))
    assert found["nodes"].problems == ("the nodes probe could not run (ConnectionResetError: ssh channel closed).",)


def test_bad_spark_master_setting_and_redaction():
    ctx = HealthContext(state=platform_state.PlatformState({"stages": {}}),
                        env={"DATACLOUD_SPARK_TARGET": "standalone", "DATACLOUD_SPARK_MASTER": "localhost:7077"})
    problem = "DATACLOUD_SPARK_MASTER must look like spark://host:7077, not 'localhost:7077'."
    assert health.probe_spark_master(ctx) == ("", [problem])
    assert health.redact("mongodb://app:s3cr%40t@mongos.mongo:27017/datacloud?authSource=admin") == (
        "mongodb://app:***@mongos.mongo:27017/datacloud?authSource=admin")
    assert health.redact("mongodb://127.0.0.1:27017/x") == "mongodb://127.0.0.1:27017/x"
