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


def _workload(kind: str, ns: str, name: str, ready: int, want: int) -> dict[str, Any]:
    if kind == "DaemonSet":
        return {"kind": kind, "metadata": {"namespace": ns, "name": name},
                "status": {"numberReady": ready, "desiredNumberScheduled": want}}  # fmt: skip
    return {"kind": kind, "metadata": {"namespace": ns, "name": name}, "spec": {"replicas": want},
            "status": {"readyReplicas": ready} if ready else {}}  # fmt: skip


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
        self.calls.append(args)
        assert args[:2] == ("get", verify.WORKLOAD_KINDS) and "--all-namespaces" in args
        assert args[args.index("--selector") + 1] == verify.PART_OF
        return Result(0, json.dumps({"items": list(reversed(self.workloads))}), "")


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


def test_a_dry_run_reads_nothing(inv):
    view = ClusterViewDouble([], [])
    assert verify.summary(Ctx(inv, view, dry_run=True))["dry_run"] is True
    assert view.calls == []
