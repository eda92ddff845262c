"""Stage storage: Rook-Ceph (CephFS for RWX, RBD for RWO), or local-path.

``render(inv)`` is pure: the Rook operator chart (pinned in
manifests/versions.yaml) plus our own CephCluster, pools and StorageClasses,
every number read from ``inv.components.storage`` so the capacity report and
the manifests agree. With fewer than 3 Ceph disks on 3 nodes the stage
installs the local-path provisioner instead and says so.

The run side waits for Ceph health (HEALTH_OK, or HEALTH_WARN whose checks
are all on :data:`HEALTH_WARN_ALLOWED`) and proves every StorageClass by
binding a claim, writing through a pod, and deleting both.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from datacloud.inventory import Inventory, Resources, StorageSettings
from datacloud.render import Release, Rendered, render_template, versions

log = logging.getLogger(__name__)

CEPH_NAMESPACE = "rook-ceph"
CEPH_CLUSTER = "rook-ceph"
LOCAL_PATH_NAMESPACE = "local-path-storage"
BLOCK_POOL = "replicapool"
FILESYSTEM = "cephfs"
BLOCK_CLASS = "rook-ceph-block"
FS_CLASS = "rook-cephfs"
LOCAL_PATH_CLASS = "local-path"
LOCAL_PATH_DIR = "/var/lib/datacloud/local-path"

# HEALTH_WARN checks a fresh small cluster may show that do not endanger data;
# the stage logs each one it accepts. Anything else keeps it waiting.
HEALTH_WARN_ALLOWED: dict[str, str] = {
    "MON_DISK_LOW": "a mon's host disk is over 70 % full; data is safe, free space on the node soon",
    "AUTH_INSECURE_GLOBAL_ID_RECLAIM_ALLOWED": "older clients may reclaim global ids; harmless on a private network",
    "POOL_TOO_FEW_PGS": "the PG autoscaler is still adjusting placement groups",
    "POOL_TOO_MANY_PGS": "the PG autoscaler is still adjusting placement groups",
    "PG_NOT_DEEP_SCRUBBED": "scrubbing has not caught up yet on a new cluster",
    "PG_NOT_SCRUBBED": "scrubbing has not caught up yet on a new cluster",
}


def k8s_resources(r: Resources) -> dict[str, Any]:
    """Requests (cpu, memory) and a memory limit; no CPU limit (it only throttles)."""
    return {
        "requests": {"cpu": f"{r.cpu_m}m", "memory": f"{r.memory_mb}Mi"},
        "limits": {"memory": f"{r.limit_mb}Mi"},
    }


def split_resources(r: Resources, weights: list[int]) -> list[dict[str, Any]]:
    """Share one pod's requests over its containers by weight; the sums equal the pod's
    settings exactly (the last container takes the rounding remainder)."""
    total = sum(weights)
    out: list[dict[str, Any]] = []
    used = [0, 0, 0]
    for i, w in enumerate(weights):
        if i == len(weights) - 1:
            cpu, mem, lim = r.cpu_m - used[0], r.memory_mb - used[1], r.limit_mb - used[2]
        else:
            cpu, mem, lim = r.cpu_m * w // total, r.memory_mb * w // total, r.limit_mb * w // total
        used = [used[0] + cpu, used[1] + mem, used[2] + lim]
        out.append(k8s_resources(Resources(cpu_m=max(cpu, 1), memory_mb=max(mem, 16), limit_memory_mb=max(lim, mem, 16))))
    return out


# Containers of the CSI pods Rook deploys (snapshotters, liveness and omap
# sidecars are switched off in the chart values); the driver comes last.
CSI_PODS: dict[str, tuple[str, list[str]]] = {
    "csiRBDProvisionerResource": ("provisioner", ["csi-provisioner", "csi-resizer", "csi-attacher", "csi-rbdplugin"]),
    "csiCephFSProvisionerResource": ("provisioner", ["csi-provisioner", "csi-resizer", "csi-attacher", "csi-cephfsplugin"]),
    "csiRBDPluginResource": ("plugin", ["driver-registrar", "csi-rbdplugin"]),
    "csiCephFSPluginResource": ("plugin", ["driver-registrar", "csi-cephfsplugin"]),
}


def csi_container_resources(s: StorageSettings) -> dict[str, list[dict[str, Any]]]:
    """Per CSI pod kind, the chart's list of {name, resource} (driver 2 shares, sidecars 1)."""
    out = {}
    for key, (kind, names) in CSI_PODS.items():
        pod = s.csi_provisioner if kind == "provisioner" else s.csi_plugin
        weights = [1] * (len(names) - 1) + [2]
        out[key] = [{"name": n, "resource": r} for n, r in zip(names, split_resources(pod, weights), strict=True)]
    return out


def storage_classes(inv: Inventory) -> dict[str, str | None]:
    """The classes later stages use: rwo (default) and rwx (None without Ceph)."""
    if inv.storage_backend == "rook-ceph":
        return {"rwo": BLOCK_CLASS, "rwx": FS_CLASS}
    return {"rwo": LOCAL_PATH_CLASS, "rwx": None}


def operator_values(s: StorageSettings) -> dict[str, Any]:
    csi: dict[str, Any] = {
        "enableLiveness": False,
        "enableRBDSnapshotter": False,
        "enableCephfsSnapshotter": False,
        "enableNFSSnapshotter": False,
        "enableOMAPGenerator": False,
        "provisionerReplicas": 2,
    }
    for key, containers in csi_container_resources(s).items():
        # The chart takes these lists as YAML text.
        csi[key] = yaml.safe_dump(containers, sort_keys=False)
    return {
        "crds": {"enabled": True},
        "resources": k8s_resources(s.operator),
        "enableDiscoveryDaemon": False,
        "monitoring": {"enabled": False},
        "csi": csi,
    }


def _ceph_objects(inv: Inventory) -> dict[str, list[dict[str, Any]]]:
    s = inv.components.storage
    replication = inv.ceph_replication
    ctx: dict[str, Any] = {
        "namespace": CEPH_NAMESPACE,
        "cluster_name": CEPH_CLUSTER,
        "mon_count": inv.mon_count,
        "replication": replication,
        "min_size": max(1, replication - 1),
        "osd_memory_target_bytes": s.osd_memory_target_mb * 1024 * 1024,
        "nodes": [{"name": n.name, "devices": [d.device.removeprefix("/dev/") for d in n.ceph_disks]} for n in inv.ceph_nodes],
        "res": {
            "mon": k8s_resources(s.mon),
            "mgr": k8s_resources(s.mgr),
            "osd": k8s_resources(s.osd),
            "prepareosd": k8s_resources(s.prepare_osd),
            "exporter": k8s_resources(s.exporter),
            "mds": k8s_resources(s.mds),
        },
        "block_pool": BLOCK_POOL,
        "filesystem": FILESYSTEM,
        "block_class": BLOCK_CLASS,
        "fs_class": FS_CLASS,
    }
    return {
        "namespace": render_template("storage/namespace.yaml", **ctx),
        "ceph-cluster": render_template("storage/ceph-cluster.yaml", **ctx),
        "pools": render_template("storage/pools.yaml", **ctx),
        "storageclasses": render_template("storage/storageclasses.yaml", **ctx),
    }


def _local_path_objects(inv: Inventory) -> dict[str, list[dict[str, Any]]]:
    s = inv.components.storage
    helper = Resources(cpu_m=10, memory_mb=16, limit_memory_mb=64)
    ctx = {
        "namespace": LOCAL_PATH_NAMESPACE,
        "block_class": LOCAL_PATH_CLASS,
        "host_path": LOCAL_PATH_DIR,
        "res": {"local_path": k8s_resources(s.local_path), "helper": k8s_resources(helper)},
    }
    return {"local-path": render_template("storage/local-path.yaml", **ctx)}


def render(inv: Inventory) -> Rendered:
    if inv.storage_backend == "local-path":
        return Rendered(objects=_local_path_objects(inv))
    v = versions()["storage"]
    operator = Release(
        name="rook-ceph",
        namespace=CEPH_NAMESPACE,
        chart=v["rook_chart"],
        repo=v["rook_repo"],
        version=v["rook_version"],
        values=operator_values(inv.components.storage),
    )
    return Rendered(objects=_ceph_objects(inv), releases=[operator])


def probe_objects(storage_class: str, access_mode: str, name: str, namespace: str) -> list[dict[str, Any]]:
    """A claim and a pod writing to it, to prove one StorageClass (run-unique name)."""
    res = k8s_resources(Resources(cpu_m=10, memory_mb=16, limit_memory_mb=32))
    return render_template(
        "storage/probe.yaml", name=name, namespace=namespace, storage_class=storage_class, access_mode=access_mode, res=res
    )
