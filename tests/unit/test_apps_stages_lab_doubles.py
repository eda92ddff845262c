"""The spark, jupyter and monitoring apply steps through the real ``datacloud.kube.Kube``
against the lab's recording kubectl/helm doubles (tests/lab/doubles/double.py).

The lab runs those doubles on SSH nodes; here the same double code answers in
process (``LocalDoubleRemote``, a test double of ``datacloud.remote.Remote``) with
its state in a temporary folder, so the real Kube logic (server-side diff before
apply, helm list/get values before upgrade, rollout status) meets the same
answers it gets in the lab, without network namespaces.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from datacloud.config import REPO_ROOT
from datacloud.kube import Kube
from datacloud.remote import CommandError, Result
from datacloud.stages import jupyter, monitoring, spark
from datacloud.stages.apps_common import MONGO_APP_SECRET, MONGO_MONITOR_SECRET, MONGO_NS
from tests.unit.apps_fixtures import inventories

DOUBLE = REPO_ROOT / "tests" / "lab" / "doubles" / "double.py"


@pytest.fixture
def cluster_double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("lab_double_under_test", DOUBLE)
    double = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(double)
    monkeypatch.setattr(double, "STATE", str(tmp_path / "double-cluster"))
    # The lab's kubeconfig check wants /etc/kubernetes/admin.conf on the node; here the
    # control plane is "initialised" by the state file alone.
    monkeypatch.setattr(double, "_need_kubeconfig", lambda argv: None)
    with double.Locked() as st:
        st["initialized"] = True
        st["cni"] = "calico"
        st["nodes"] = {"master": {}}
    return double


class LocalDoubleRemote:
    """Test double of Remote: runs the lab's kubectl/helm doubles in process."""

    def __init__(self, double) -> None:
        self.double = double
        self.node = SimpleNamespace(name="master")
        self.calls: list[list[str]] = []

    def run(self, argv, *, stdin=None, check=True, quiet=False, what=None, timeout=None, env=None, become=None) -> Result:
        tool, args = argv[0], list(argv[1:])
        self.calls.append(list(argv))
        if tool == "sh":  # Kube.available(): kubeconfig present and the tools installed
            with self.double.Locked() as st:
                return Result(0 if st.get("initialized") else 1, "", "")
        out, err, rc = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                {"kubectl": self.double.kubectl, "helm": self.double.helm}[tool](args, stdin or "")
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
        result = Result(rc, out.getvalue(), err.getvalue())
        if check and rc != 0:
            raise CommandError(self.node.name, what or tool, result)
        return result

    def close(self) -> None:
        pass


def _ctx(double, inv_name: str = "reference", dry_run: bool = False):
    remote = LocalDoubleRemote(double)
    inv = inventories()[inv_name]
    return SimpleNamespace(inv=inv, dry_run=dry_run, kube=lambda: Kube(inv, remote, dry_run=dry_run)), remote


def _seed(double, *objects: dict) -> None:
    with double.Locked() as st:
        for obj in objects:
            st["objects"][double._key(obj)] = obj


def _secret(ns: str, name: str, **data: str) -> dict:
    import base64

    enc = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "data": enc}


def _deployment(ns: str, name: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns}, "spec": {"replicas": 1}}


def _helm_calls(remote: LocalDoubleRemote) -> list[str]:
    return [c[c.index("--install") + 1] for c in remote.calls if c[0] == "helm" and "upgrade" in c]


def test_spark_apply_through_kube_and_the_lab_doubles(cluster_double) -> None:
    ctx, remote = _ctx(cluster_double)
    first = spark.apply(ctx)
    assert _helm_calls(remote) == ["spark-operator"]
    upgrade = next(c for c in remote.calls if c[0] == "helm" and "upgrade" in c)
    assert upgrade[upgrade.index("--version") + 1] == spark.operator_release(ctx.inv).version
    with cluster_double.Locked() as st:
        assert "ServiceAccount/spark-jobs/spark" in st["objects"]
        assert st["releases"]["spark-operator/spark-operator"]["values"]["spark"]["jobNamespaces"] == ["spark-jobs"]
    assert len(first["changes"]) == len(spark.render(ctx.inv).all_objects()) + 1
    ctx2, remote2 = _ctx(cluster_double)
    assert spark.apply(ctx2)["changes"] == []
    assert _helm_calls(remote2) == []  # unchanged release: no upgrade at all
    assert not [c for c in remote2.calls if c[:2] == ["kubectl", "--kubeconfig"] and "apply" in c]


def test_spark_dry_run_through_kube_changes_nothing(cluster_double) -> None:
    ctx, remote = _ctx(cluster_double, dry_run=True)
    out = spark.apply(ctx)
    assert out["changes"]
    with cluster_double.Locked() as st:
        assert st["objects"] == {}
        assert st["releases"] == {}
    assert not [c for c in remote.calls if "apply" in c or "upgrade" in c]


def test_jupyter_apply_through_kube_and_the_lab_doubles(cluster_double) -> None:
    # what the chart and the mongo stage leave in the cluster
    _seed(
        cluster_double,
        _deployment("jupyter", "hub"),
        _deployment("jupyter", "proxy"),
        _secret(MONGO_NS, MONGO_APP_SECRET, password="s3cret"),
    )
    ctx, remote = _ctx(cluster_double)
    first = jupyter.apply(ctx)
    assert any("notebook-mongo" in c for c in first["changes"])
    with cluster_double.Locked() as st:
        uri = st["objects"]["Secret/jupyter/notebook-mongo"]["stringData"]["uri"]
        values = st["releases"]["jupyter/jupyterhub"]["values"]
    assert uri.startswith("mongodb://datacloud:s3cret@datacloud-mongo-mongos.mongo.svc")
    assert values["hub"]["config"]["JupyterHub"]["authenticator_class"] == "nativeauthenticator.NativeAuthenticator"
    assert [
        "kubectl",
        "--kubeconfig",
        "/etc/kubernetes/admin.conf",
        "rollout",
        "status",
        "deployment/hub",
        "--namespace",
        "jupyter",
        "--timeout=600s",
    ] in remote.calls
    _api_server_stores_secret_data(cluster_double)
    ctx2, remote2 = _ctx(cluster_double)
    assert jupyter.apply(ctx2)["changes"] == []
    assert _helm_calls(remote2) == []


def test_monitoring_apply_through_kube_and_the_lab_doubles(cluster_double) -> None:
    inv = inventories()["reference"]
    exporters = [_deployment("monitoring", f"mongodb-exporter-{t}") for t in monitoring.exporter_targets(inv)]
    _seed(cluster_double, _secret(MONGO_NS, MONGO_MONITOR_SECRET, password="m0n"), *exporters)
    ctx, remote = _ctx(cluster_double)
    monitoring.apply(ctx)
    assert _helm_calls(remote) == ["kube-prometheus-stack", "headlamp"]
    with cluster_double.Locked() as st:
        objects = st["objects"]
    assert "PrometheusRule/monitoring/datacloud" in objects
    assert "ClusterRoleBinding//headlamp-view" in objects
    assert set(objects["Secret/monitoring/mongodb-exporter"]["stringData"]) == {
        f"uri-{t}" for t in monitoring.exporter_targets(inv)
    }
    _api_server_stores_secret_data(cluster_double)
    ctx2, remote2 = _ctx(cluster_double)
    again = monitoring.apply(ctx2)
    assert again["changes"] == []
    assert _helm_calls(remote2) == []


def _api_server_stores_secret_data(double) -> None:
    """What the API server does with a Secret's stringData (the double keeps objects as sent)."""
    import base64

    with double.Locked() as st:
        for obj in st["objects"].values():
            if obj.get("kind") == "Secret" and "stringData" in obj:
                data = obj.setdefault("data", {})
                data.update({k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()})
