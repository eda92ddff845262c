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
import secrets
import time
from collections.abc import Callable
from typing import Any

import yaml

from datacloud.errors import TransientError
from datacloud.inventory import Inventory, Resources, StorageSettings
from datacloud.kube import object_id
from datacloud.render import Release, Rendered, namespace_policies, render_template, versions
from datacloud.stages._common import Step, outcome

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
        # Ceph daemons and CSI plugins talk across nodes and host networking:
        # anything inside the cluster, nothing from outside it.
        "networkpolicies": namespace_policies(inv, ctx["namespace"], peers_cluster_wide=True),
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
    return {
        "local-path": render_template("storage/local-path.yaml", **ctx),
        "networkpolicies": namespace_policies(inv, LOCAL_PATH_NAMESPACE),
    }


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


# --- running the stage (the STEPS of its TaskGroup; see datacloud.stages) ---

PROBE_NAMESPACE = "default"
POLL_S = 5.0
PROGRESS_EVERY_S = 15.0


def wait_until(
    what: str,
    check: Callable[[], tuple[bool, str]],
    timeout_s: float,
    *,
    interval_s: float | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    explain: Callable[[], str] | None = None,
) -> str:
    """Call ``check()`` -> (done, state) until done; log the state at most every
    ``progress_every_s``; a timeout is a TransientError naming the last state
    and what ``explain()`` adds (Kube.why_waiting: the pods' reasons; the task retries)."""
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    interval_s = POLL_S if interval_s is None else interval_s
    start = clock()
    last_log = -progress_every_s
    while True:
        done, state = check()
        now = clock() - start
        if done:
            log.info("%s | ready after %.0fs: %s", what, now, state)
            return state
        if now - last_log >= progress_every_s:
            log.info("%s | waiting (%.0fs of %.0fs): %s", what, now, timeout_s, state)
            last_log = now
        if now >= timeout_s:
            why = explain() if explain else ""
            raise TransientError(f"{what}: not ready after {timeout_s:.0f}s; last state: {state}{why}")
        sleep(interval_s)


def ceph_health(cluster: dict[str, Any] | None) -> tuple[bool, str]:
    """(acceptable, description) from a CephCluster object's status."""
    if not cluster:
        return False, "CephCluster not created yet"
    status = cluster.get("status") or {}
    ceph = status.get("ceph") or {}
    health = ceph.get("health")
    phase = status.get("phase", "?")
    if not health:
        return False, f"phase {phase}, no Ceph health reported yet"
    checks = sorted((ceph.get("details") or {}).items())
    names = [name for name, _ in checks]
    if health == "HEALTH_OK":
        return True, "HEALTH_OK"
    if health == "HEALTH_WARN" and all(name in HEALTH_WARN_ALLOWED for name in names):
        return True, "HEALTH_WARN accepted: " + "; ".join(f"{n} ({HEALTH_WARN_ALLOWED[n]})" for n in names)
    detail = "; ".join(f"{name}: {(d or {}).get('message', '')}" for name, d in checks) or "no details"
    return False, f"{health} (phase {phase}): {detail}"


def apply_or_plan(kube: Any, objects: list[dict[str, Any]], plan_only: bool) -> list[str]:
    """Apply (or, in a dry run, diff) objects; with ``plan_only`` (a dry run whose namespace
    or CRDs do not exist yet, so the server cannot diff) just name what would be applied."""
    if plan_only:
        return [f"would apply {object_id(o)}" for o in objects]
    return kube.apply(objects).changed


def step_apply(ctx: Any) -> dict[str, Any]:
    """Install the operator (or local-path) and apply the cluster, pools and classes."""
    inv = ctx.inv
    rendered = render(inv)
    changes: list[str] = []
    if inv.storage_backend == "local-path":
        log.info("Storage | Backend | %s", inv.warnings[0] if inv.warnings else "local-path")
    namespaces = [o for o in rendered.all_objects() if o["kind"] == "Namespace"]
    with ctx.kube() as kube:
        changes += kube.apply(namespaces).changed
        missing = bool(changes)
        for release in rendered.releases:
            if kube.helm_upgrade(release):
                changes.append(f"helm release {release.name} {release.chart} {release.version}")
                missing = True
        if rendered.releases and not ctx.dry_run:
            kube.rollout_status("deployment", "rook-ceph-operator", namespace=CEPH_NAMESPACE)
        for objects in rendered.objects.values():
            rest = [o for o in objects if o["kind"] != "Namespace"]
            changes += apply_or_plan(kube, rest, ctx.dry_run and missing)
        if inv.storage_backend == "local-path" and not ctx.dry_run:
            kube.rollout_status("deployment", "local-path-provisioner", namespace=LOCAL_PATH_NAMESPACE)
    return outcome("storage", "apply", changes, ctx.dry_run, backend=inv.storage_backend)


def step_health(ctx: Any) -> dict[str, Any]:
    """Wait for HEALTH_OK, or HEALTH_WARN whose checks are all on the allow-list."""
    inv = ctx.inv
    if inv.storage_backend != "rook-ceph":
        return outcome("storage", "health", [], ctx.dry_run, health="local-path (no Ceph)")
    for name, why in HEALTH_WARN_ALLOWED.items():
        log.info("Storage | Health | HEALTH_WARN allowed for %s: %s", name, why)
    with ctx.kube() as kube:
        if ctx.dry_run and not kube.exists("cephcluster", CEPH_CLUSTER, namespace=CEPH_NAMESPACE):
            return outcome("storage", "health", [], True, health="not created yet (dry run)")
        state = wait_until(
            "Storage | Ceph health",
            lambda: ceph_health(kube.get_json("cephcluster", CEPH_CLUSTER, namespace=CEPH_NAMESPACE)),
            inv.components.storage.health_timeout_s,
            explain=lambda: kube.why_waiting(CEPH_NAMESPACE),
        )
    return outcome("storage", "health", [], ctx.dry_run, health=state)


def step_prove(ctx: Any) -> dict[str, Any]:
    """Bind a claim of every class through a pod that writes to it, then delete both."""
    inv = ctx.inv
    classes = storage_classes(inv)
    wanted = [(classes["rwo"], "ReadWriteOnce", "rwo")] + ([(classes["rwx"], "ReadWriteMany", "rwx")] if classes["rwx"] else [])
    if ctx.dry_run:
        return outcome("storage", "prove", [], True, proven=[])
    proven = []
    timeout = 300
    with ctx.kube() as kube:
        for storage_class, mode, short in wanted:
            name = f"datacloud-probe-{short}-{secrets.token_hex(4)}"
            objects = probe_objects(storage_class, mode, name, PROBE_NAMESPACE)
            try:
                kube.apply(objects)
                res = kube.kubectl(
                    "wait", "pod", name, "--namespace", PROBE_NAMESPACE,
                    "--for=jsonpath={.status.phase}=Succeeded", f"--timeout={timeout}s",
                    check=False, timeout=timeout + 60,
                )  # fmt: skip
                claim = kube.get_json("persistentvolumeclaim", name, namespace=PROBE_NAMESPACE) or {}
                phase = (claim.get("status") or {}).get("phase")
                if res.rc != 0 or phase != "Bound":
                    raise TransientError(
                        f"storage class {storage_class} did not serve a {mode} claim within {timeout}s "
                        f"(claim {phase or 'missing'})"
                    )
                log.info("Storage | Prove | %s served a %s claim and a pod wrote to it", storage_class, mode)
                proven.append(storage_class)
            finally:
                kube.kubectl(
                    "delete", "pod,persistentvolumeclaim", name, "--namespace", PROBE_NAMESPACE,
                    "--ignore-not-found", "--wait=true", "--timeout=120s", check=False,
                )  # fmt: skip
    return outcome("storage", "prove", [], False, proven=proven)


STEPS = [Step("apply", step_apply), Step("health", step_health), Step("prove", step_prove)]
