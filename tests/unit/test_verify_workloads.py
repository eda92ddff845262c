"""verify.summary: every workload the stages made (label app.kubernetes.io/part-of=datacloud) must be ready.

Doubles used here (the known gap): ``ClusterViewDouble`` stands in for datacloud.kube.Kube
and answers the three reads verify makes from fixed objects. The lab test
(tests/lab/test_provision_lab.py) runs the same step against the real cluster.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from datacloud.errors import TransientError
from datacloud.remote import Result
from datacloud.stages import verify
from tests.helpers import datalayer_inventories as inventories


def _node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.34.2"}},
    }


def _workload(kind: str, ns: str, name: str, ready: int, want: int, label: str = verify.PART_OF) -> dict[str, Any]:
    key, value = label.split("=")
    meta = {"namespace": ns, "name": name, "labels": {key: value}}
    if kind == "DaemonSet":
        return {"kind": kind, "metadata": meta, "status": {"numberReady": ready, "desiredNumberScheduled": want}}
    return {"kind": kind, "metadata": meta, "spec": {"replicas": want}, "status": {"readyReplicas": ready} if ready else {}}


@dataclass
class ClusterViewDouble:
    """DOUBLE of datacloud.kube.Kube: the nodes, CoreDNS and the labelled workloads, as fixed answers."""

    nodes: list[str]
    workloads: list[dict[str, Any]]
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def __enter__(self) -> ClusterViewDouble:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def get_json(self, kind: str, name: str | None = None, **_: Any) -> Any:
        if kind == "nodes":
            return {"items": [_node(n) for n in self.nodes]}
        if (kind, name) == ("deployment", "coredns"):
            return {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
        return None

    def kubectl(self, *args: str, **_: Any) -> Result:
        """`get WORKLOAD_KINDS --selector k=v`: the workloads carrying that label (as the API server selects)."""
        self.calls.append(args)
        assert args[:2] == ("get", verify.WORKLOAD_KINDS) and "--all-namespaces" in args
        key, value = args[args.index("--selector") + 1].split("=")
        items = [w for w in reversed(self.workloads) if w["metadata"]["labels"].get(key) == value]
        return Result(0, json.dumps({"items": items}), "")


@dataclass
class Ctx:
    inv: Any
    view: ClusterViewDouble
    dry_run: bool = False

    def kube(self) -> ClusterViewDouble:
        return self.view


@pytest.fixture
def inv():
    return inventories.three_nodes()


def test_every_labelled_workload_ready_passes_and_is_listed(inv, caplog):
    caplog.set_level(logging.INFO)
    view = ClusterViewDouble(
        [n.name for n in inv.nodes],
        [_workload("Deployment", "local-path-storage", "local-path-provisioner", 1, 1),
         _workload("DaemonSet", "monitoring", "node-exporter", 3, 3)],
    )  # fmt: skip
    result = verify.summary(Ctx(inv, view))
    assert result["workloads"] == 2 and result["changes"] == []
    table = next(r.getMessage() for r in caplog.records if "verify | Summary" in r.getMessage())
    assert "local-path-storage/deployment/local-path-provisioner" in table and "1/1" in table
    assert table.index("local-path-storage/") < table.index("monitoring/")  # sorted by namespace
    assert "monitoring/daemonset/node-exporter" in table and "3/3" in table


def test_a_workload_short_of_ready_fails_naming_it(inv):
    view = ClusterViewDouble(
        [n.name for n in inv.nodes],
        [_workload("Deployment", "local-path-storage", "local-path-provisioner", 0, 1),
         _workload("DaemonSet", "monitoring", "node-exporter", 2, 3),
         _workload("StatefulSet", "spark-operator", "history", 1, 1)],
    )  # fmt: skip
    with pytest.raises(TransientError) as err:
        verify.summary(Ctx(inv, view))
    message = str(err.value)
    assert "Deployment local-path-storage/local-path-provisioner has 0 of 1 ready" in message
    assert "DaemonSet monitoring/node-exporter has 2 of 3 ready" in message
    assert "history" not in message and "\n" not in message


def test_what_the_operators_made_is_verified_too(inv):
    """The sharded MongoDB's StatefulSets carry the Percona operator's labels, not the platform's: verify
    selects them (and Ceph's and Prometheus's) too, each workload once."""
    op = "app.kubernetes.io/managed-by=percona-server-mongodb-operator"
    view = ClusterViewDouble(
        [n.name for n in inv.nodes],
        [_workload("Deployment", "mongo", "percona-server-mongodb-operator", 1, 1),
         _workload("StatefulSet", "mongo", "datacloud-mongo-rs0", 2, 3, label=op),
         _workload("StatefulSet", "mongo", "datacloud-mongo-cfg", 3, 3, label=op)],
    )  # fmt: skip
    with pytest.raises(TransientError) as err:
        verify.summary(Ctx(inv, view))
    assert str(err.value) == "StatefulSet mongo/datacloud-mongo-rs0 has 2 of 3 ready"
    assert [c[c.index("--selector") + 1] for c in view.calls] == list(verify.WORKLOAD_SELECTORS)


def test_mongo_that_does_not_answer_the_connections_user_fails_verify_in_one_sentence(inv, monkeypatch):
    """With the mongo stage's PerconaServerMongoDB present, verify pings mongos as the datacloud_mongo
    connection's user through an SSH forward (here: a closed local port stands in for the forward)."""
    import contextlib
    import socket

    from datacloud import connections, forward

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    @contextlib.contextmanager
    def forward_double(transport, host, port):
        assert (host, port) == ("10.96.0.27", 27017)
        yield "127.0.0.1", closed

    class MongoView(ClusterViewDouble):
        remote = type("R", (), {"connect": lambda self: type("T", (), {"get_transport": lambda self: None})()})()

        def get_json(self, kind, name=None, **kw):
            if kind == "perconaservermongodb":
                return {"status": {"state": "ready"}}
            if kind == "service":
                return {"spec": {"clusterIP": "10.96.0.27"}}
            return super().get_json(kind, name, **kw)

    view = MongoView([n.name for n in inv.nodes], [])
    monkeypatch.setattr(forward, "ssh_forward", forward_double)
    monkeypatch.setattr(verify, "MONGO_PING_TIMEOUT_MS", 300)
    monkeypatch.setattr(connections, "get", lambda conn_id: None)
    with pytest.raises(TransientError, match=r"^the connection datacloud_mongo is missing"):
        verify.summary(Ctx(inv, view))
    conn = {"login": "datacloud", "password": "pw", "extra": {"authSource": "admin"}}
    monkeypatch.setattr(connections, "get", lambda conn_id: conn)
    with pytest.raises(TransientError) as err:
        verify.summary(Ctx(inv, view))
    assert str(err.value).startswith("mongos does not answer a ping as datacloud (datacloud_mongo): ")
    assert "pw" not in str(err.value) and "\n" not in str(err.value)


def test_a_dry_run_reads_nothing(inv):
    view = ClusterViewDouble([], [])
    assert verify.summary(Ctx(inv, view, dry_run=True))["dry_run"] is True
    assert view.calls == []
