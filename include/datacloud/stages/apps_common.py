"""Pieces shared by the spark, jupyter and monitoring stages (pure, no I/O).

Kubernetes quantities from the inventory's :class:`~datacloud.inventory.Resources`,
the namespaces these stages own, and the NetworkPolicy building blocks every
namespace gets (default deny, DNS, the API server).
"""

from __future__ import annotations

from typing import Any

from datacloud.inventory import Inventory, Resources

SPARK_OPERATOR_NS = "spark-operator"
SPARK_JOBS_NS = "spark-jobs"
JUPYTER_NS = "jupyter"
MONITORING_NS = "monitoring"
# Owned by the storage/mongo stages; named here only to open traffic towards them.
MONGO_NS = "mongo"
ROOK_NS = "rook-ceph"
MONGO_PORT = 27017

PART_OF = "datacloud"


def resources(res: Resources) -> dict[str, Any]:
    """requests (cpu + memory) and a memory limit, as the capacity planner counts them."""
    return {
        "requests": {"cpu": f"{res.cpu_m}m", "memory": f"{res.memory_mb}Mi"},
        "limits": {"memory": f"{res.limit_mb}Mi"},
    }


def split(res: Resources, cpu_m: int, memory_mb: int) -> tuple[Resources, Resources]:
    """Split one pod budget into (main container, sidecar) so the pod total stays ``res``."""
    if cpu_m >= res.cpu_m or memory_mb >= res.memory_mb:
        raise ValueError(f"a sidecar of {cpu_m}m/{memory_mb}Mi does not fit into {res.cpu_m}m/{res.memory_mb}Mi")
    side = Resources(cpu_m=cpu_m, memory_mb=memory_mb, limit_memory_mb=max(memory_mb * 2, 64))
    main = Resources(
        cpu_m=res.cpu_m - cpu_m,
        memory_mb=res.memory_mb - memory_mb,
        limit_memory_mb=max(res.limit_mb - side.limit_mb, res.memory_mb - memory_mb),
    )
    return main, side


def storage_classes(inv: Inventory) -> dict[str, str]:
    """StorageClass names from the storage stage: Ceph block/CephFS, or local-path for both."""
    if inv.storage_backend == "rook-ceph":
        return {"block": "rook-ceph-block", "shared": "rook-cephfs", "shared_mode": "ReadWriteMany"}
    return {"block": "local-path", "shared": "local-path", "shared_mode": "ReadWriteOnce"}


def labels(component: str, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": PART_OF}


def netpol_context(inv: Inventory) -> dict[str, Any]:
    """Addresses NetworkPolicies need: the API server after DNAT is the control plane's address."""
    return {
        "apiserver_cidr": f"{inv.control_plane.address}/32",
        "apiserver_port": 6443,
        "node_subnet": str(inv.network.subnet),
        "mongo_ns": MONGO_NS,
        "mongo_port": MONGO_PORT,
        "monitoring_ns": MONITORING_NS,
    }
