"""Pieces shared by the spark, jupyter and monitoring stages (pure, no I/O).

Kubernetes quantities from the inventory's :class:`~datacloud.inventory.Resources`,
the namespaces these stages own, the NetworkPolicy building blocks every
namespace gets (default deny, DNS, the API server), and the annotation that asks
the mongo, spark and jupyter stages to rotate a generated Secret.
"""

from __future__ import annotations

from typing import Any

from datacloud.inventory import Inventory, Resources

SPARK_OPERATOR_NS = "spark-operator"
SPARK_JOBS_NS = "spark-jobs"
# The Spark Connect server and its executors (notebooks and pipelines), apart from batch jobs.
SPARK_CONNECT_NS = "spark-connect"
JUPYTER_NS = "jupyter"
MONITORING_NS = "monitoring"
# Owned by the storage/mongo stages; named here only to open traffic towards them.
MONGO_NS = "mongo"
ROOK_NS = "rook-ceph"
MONGO_PORT = 27017

PART_OF = "datacloud"

# An administrator asks for a new generated value by annotating its Secret (kubectl
# annotate secret -n mongo <name> datacloud/rotate=true; the same for the Spark Connect
# token and the JupyterHub admin's password); the next run of the stage owning the
# Secret rotates it and removes the annotation.
ROTATE_ANNOTATION = "datacloud/rotate"


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
        "pod_cidr": str(inv.cluster.pod_cidr),
        "mongo_ns": MONGO_NS,
        "mongo_port": MONGO_PORT,
        "monitoring_ns": MONITORING_NS,
    }


# --- run side: names owned by the mongo stage (datacloud.stages.mongo), observing order ---

MONGO_CLUSTER = "datacloud-mongo"  # PerconaServerMongoDB name in MONGO_NS
MONGO_APP_SECRET = f"{MONGO_CLUSTER}-app"  # key `password`: user `datacloud` (readWrite on datacloud)
MONGO_MONITOR_SECRET = f"{MONGO_CLUSTER}-monitor"  # key `password`: user `datacloud-monitor` (clusterMonitor)
MONGO_APP_USER = "datacloud"
MONGO_MONITOR_USER = "datacloud-monitor"


def mongo_service_host(member: str) -> str:
    """In-cluster DNS of a Percona service: mongos, cfg or rsN."""
    return f"{MONGO_CLUSTER}-{member}.{MONGO_NS}.svc.cluster.local"


def secret_value(kube: Any, name: str, namespace: str, key: str) -> str | None:
    """One decoded value of a Secret, or None when the Secret or key is missing (never logged)."""
    return decoded_value(kube.get_json("secret", name, namespace=namespace), key)


def decoded_value(obj: dict[str, Any] | None, key: str) -> str | None:
    """One decoded value of a Secret object already read, or None when it or the key is missing."""
    import base64

    if not obj or key not in (obj.get("data") or {}):
        return None
    return base64.b64decode(obj["data"][key]).decode()


def secret_object(name: str, namespace: str, data: dict[str, str], component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/component": component},
        },
        "stringData": data,
    }


def mongo_uri_secret(kube: Any, name: str, namespace: str, component: str) -> tuple[dict[str, Any] | None, str]:
    """Secret NAME in NAMESPACE (key ``uri``): the mongo stage's application user through mongos (in-cluster
    DNS), for the pods of another stage. (None, "unchanged") when it holds that URI already, (None, why)
    when the mongo stage has not run; the password and the URI are masked, never logged."""
    from datacloud.connections import mask
    from datacloud.stages.mongo import user_uri

    password = secret_value(kube, MONGO_APP_SECRET, MONGO_NS, "password")
    if password is None:
        return None, f"Secret {MONGO_NS}/{MONGO_APP_SECRET} does not exist yet (run the mongo stage)"
    uri = user_uri(password, mongo_service_host("mongos"), MONGO_PORT)
    mask(password)
    mask(uri)
    if secret_value(kube, name, namespace, "uri") == uri:
        return None, "unchanged"
    return secret_object(name, namespace, {"uri": uri}, component), "changed"


class Poller:
    """Wait for a condition with progress lines at most every ``progress_s`` seconds.

    ``check()`` returns (done, description); the clock and sleep are injectable so
    tests run without waiting.
    """

    def __init__(
        self,
        what: str,
        timeout_s: float,
        interval_s: float = 5,
        progress_s: float = 15,
        clock: Any = None,
        sleep: Any = None,
        explain: Any = None,
    ):
        import time

        self.what, self.timeout_s, self.interval_s, self.progress_s = what, timeout_s, interval_s, progress_s
        self.explain = explain  # () -> "; why: ..." for the timeout's error (Kube.why_waiting)
        self.clock = clock or time.monotonic
        self.sleep = sleep or time.sleep

    def run(self, check: Any, log: Any) -> str:
        from datacloud.errors import TransientError

        start = self.clock()
        last_line = None
        while True:
            done, state = check()
            now = self.clock()
            if done:
                log.info("%s | done after %.0f s: %s", self.what, now - start, state)
                return state
            if last_line is None or now - last_line >= self.progress_s:
                log.info("%s | waiting (%.0f s): %s", self.what, now - start, state)
                last_line = now
            if now - start >= self.timeout_s:
                why = self.explain() if self.explain else ""
                raise TransientError(f"{self.what}: not done within {self.timeout_s:.0f} s (last state: {state}){why}")
            self.sleep(self.interval_s)
