#!/usr/bin/python3
"""DOUBLE of the Percona Operator for MongoDB (its controller), for the SSH lab's cluster.

Neither the operator nor mongod can be built here, so the lab mirror pushes one image under
both names (percona/percona-server-mongodb-operator:<chart appVersion> and the
PerconaServerMongoDB's ``spec.image``): Debian's python3, FerretDB (built here from its Go
module) and tests/lab/mongo_double.py. The operator's chart is installed unchanged; its
Deployment starts this file as ``percona-server-mongodb-operator``. Through the real API, with
the operator's ServiceAccount and Role, it does for each PerconaServerMongoDB in its namespace
what the operator does, in the operator's names and labels:

* a StatefulSet and headless Service per replica set (``spec.replsets[]`` and the config server
  replica set ``cfg``) with the object's size, resources, anti-affinity and volume claims (the
  claims bind for real on the storage stage's class), and a PodDisruptionBudget each;
* a StatefulSet of mongos routers and the Service ``<cluster>-mongos`` (ClusterIP or NodePort,
  as ``spec.sharding.mongos.expose`` says), the name the platform's connection uses;
* the users: the system users of ``spec.secrets.users`` and ``spec.users`` with the passwords of
  their Secrets (re-read every round, so a rotated password takes effect), and the keyFile;
* ``status``: state ``initializing`` until every replica set and the routers are ready, then
  ``ready``, with ``replsets`` and ``mongos`` counts as the operator writes them;
* on deletion, the finalizer ``percona.com/delete-psmdb-pods-in-order`` is removed (the
  workloads go with their owner).

The pods run tests/lab/mongo_double.py (what is real there and what is modelled is in its
docstring): the first member of the first shard keeps the data in FerretDB on its claim, the
routers forward to it. Not done: TLS (``tls.mode`` is ignored; clients speak plain, which
preferTLS accepts), backups, PMM, smart updates, scaling down a replica set in order, and
``expose`` of the replica sets.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), "/opt"]  # double_api.py: next to this file, /opt in the image
from double_api import Api, now, serve_probes  # noqa: E402

GROUP = "psmdb.percona.com"
VERSION = "v1"
POLL_S = 3.0
MANAGER = "psmdb-operator-double"
PORT = 27017
STORE_PORT = 27019  # FerretDB in the first member of the first shard (reached by the routers only)
UID = 1001  # the uid of Percona's mongod image
DOUBLE = "/opt/mongo-double.py"
USERS_DIR = "/etc/mongo-double"
FINALIZER = "percona.com/delete-psmdb-pods-in-order"
# the roles the operator gives its system users (keys of spec.secrets.users: <PREFIX>_USER/_PASSWORD)
SYSTEM_ROLES = {
    "MONGODB_BACKUP": ["backup", "clusterMonitor", "restore"],
    "MONGODB_DATABASE_ADMIN": [
        "readWriteAnyDatabase",
        "readAnyDatabase",
        "dbAdminAnyDatabase",
        "backup",
        "restore",
        "clusterMonitor",
    ],
    "MONGODB_CLUSTER_ADMIN": ["clusterAdmin"],
    "MONGODB_CLUSTER_MONITOR": ["clusterMonitor"],
    "MONGODB_USER_ADMIN": ["userAdminAnyDatabase"],
}


def log(msg: str) -> None:
    print(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} psmdb-operator-double {msg}", flush=True)


def labels(cluster: str, component: str, replset: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "percona-server-mongodb",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/managed-by": "percona-server-mongodb-operator",
        "app.kubernetes.io/part-of": "percona-server-mongodb",
        "app.kubernetes.io/component": component,
    }
    if replset:
        out["app.kubernetes.io/replset"] = replset
    return out


def member_hosts(cluster: str, ns: str, rs: str, size: int) -> list[str]:
    return [f"{cluster}-{rs}-{i}.{cluster}-{rs}.{ns}.svc.cluster.local:{PORT}" for i in range(size)]


def replica_sets(cr: dict) -> list[tuple[str, str, dict]]:
    """(name, component, spec) of every replica set: the shards, then the config servers."""
    spec = cr["spec"]
    out = [(rs["name"], "mongod", rs) for rs in spec.get("replsets") or []]
    sharding = spec.get("sharding") or {}
    if sharding.get("enabled"):
        out.append(("cfg", "cfg", sharding.get("configsvrReplSet") or {}))
    return out


def _anti_affinity(spec: dict, select: dict) -> dict:
    key = (spec.get("affinity") or {}).get("antiAffinityTopologyKey")
    if not key or key == "none":
        return {}
    term = {"labelSelector": {"matchLabels": select}, "topologyKey": key}
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def _container(image: str, command: list[str], resources: dict, mounts: list[dict]) -> dict:
    probe = {"tcpSocket": {"port": PORT}, "periodSeconds": 5, "failureThreshold": 6}
    return {
        "name": "mongod",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "mongodb", "containerPort": PORT}],
        "readinessProbe": {**probe, "initialDelaySeconds": 2},
        "livenessProbe": {**probe, "initialDelaySeconds": 30},
        "resources": resources or {},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def statefulset(cr: dict, name: str, component: str, spec: dict, command: list[str], claim: dict | None) -> dict:
    meta = cr["metadata"]
    cluster, ns = meta["name"], meta["namespace"]
    rs = None if component == "mongos" else name
    lab = labels(cluster, component, rs)
    mounts = [{"name": "users", "mountPath": USERS_DIR, "readOnly": True}]
    body: dict = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": f"{cluster}-{name}", "namespace": ns, "labels": lab, "ownerReferences": owner(cr)},
        "spec": {
            "serviceName": f"{cluster}-{name}",
            "replicas": int(spec.get("size", 1)),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": lab},
            "template": {
                "metadata": {"labels": lab},
                "spec": {
                    "securityContext": {"runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "runAsNonRoot": True},
                    "affinity": _anti_affinity(spec, lab),
                    "terminationGracePeriodSeconds": 10,
                    "containers": [_container(cr["spec"]["image"], command, spec.get("resources") or {}, mounts)],
                    "volumes": [{"name": "users", "secret": {"secretName": users_secret(cluster), "defaultMode": 0o440}}],
                },
            },
        },
    }
    if claim:
        mounts.append({"name": "mongod-data", "mountPath": "/data/db"})
        body["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "mongod-data", "labels": lab}, "spec": claim}]
    return body


def owner(cr: dict) -> list[dict]:
    m = cr["metadata"]
    return [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "PerconaServerMongoDB", "name": m["name"], "uid": m["uid"],
             "controller": True, "blockOwnerDeletion": True}]  # fmt: skip


def users_secret(cluster: str) -> str:
    return f"{cluster}-double-users"


def service(cr: dict, name: str, select: dict, *, headless: bool, expose: dict | None = None) -> dict:
    meta = cr["metadata"]
    spec: dict = {"selector": select, "ports": [{"name": "mongodb", "port": PORT, "targetPort": PORT}]}
    if headless:
        spec |= {"clusterIP": "None", "publishNotReadyAddresses": True}
    elif (expose or {}).get("type") == "NodePort":
        spec["type"] = "NodePort"
        if expose.get("nodePort"):
            spec["ports"][0]["nodePort"] = int(expose["nodePort"])
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"{meta['name']}-{name}", "namespace": meta["namespace"], "labels": select,
                         "ownerReferences": owner(cr)}, "spec": spec}  # fmt: skip


def pdb(cr: dict, name: str, select: dict, spec: dict) -> dict | None:
    budget = spec.get("podDisruptionBudget") or {}
    if not budget:
        return None
    meta = cr["metadata"]
    body = {"selector": {"matchLabels": select}, **{k: budget[k] for k in ("maxUnavailable", "minAvailable") if k in budget}}
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": f"{meta['name']}-{name}", "namespace": meta["namespace"], "labels": select,
                         "ownerReferences": owner(cr)}, "spec": body}  # fmt: skip


class Controller:
    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.ns = namespace

    def path(self, name: str = "") -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/perconaservermongodbs" + (f"/{name}" if name else "")

    def apply(self, obj: dict) -> dict | None:
        """Server-side apply: a round that changes nothing leaves every resourceVersion as it was."""
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = {"StatefulSet": "statefulsets", "Service": "services", "Secret": "secrets",
                  "PodDisruptionBudget": "poddisruptionbudgets"}[obj["kind"]]  # fmt: skip
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        path = f"{base}/namespaces/{self.ns}/{plural}/{obj['metadata']['name']}?fieldManager={MANAGER}&force=true"
        return self.api.call("PATCH", path, obj, "application/apply-patch+yaml")

    def secret_data(self, name: str) -> dict[str, str] | None:
        obj = self.api.call("GET", f"/api/v1/namespaces/{self.ns}/secrets/{name}")
        if obj is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}

    def users(self, cr: dict) -> tuple[list[dict] | None, str]:
        """The users the members and routers authenticate, or (None, what is missing)."""
        spec = cr["spec"]
        names = spec.get("secrets") or {}
        system = self.secret_data(names.get("users", ""))
        if system is None:
            return None, f"Secret {names.get('users')} (spec.secrets.users) not found"
        keyfile = self.secret_data(names.get("keyFile", "")) if names.get("keyFile") else {}
        if keyfile is None:
            return None, f"Secret {names.get('keyFile')} (spec.secrets.keyFile) not found"
        out = []
        for prefix, roles in SYSTEM_ROLES.items():
            user, password = system.get(f"{prefix}_USER"), system.get(f"{prefix}_PASSWORD")
            if user and password:
                out.append(
                    {"name": user, "db": "admin", "password": password, "roles": [{"name": r, "db": "admin"} for r in roles]}
                )
        for u in spec.get("users") or []:
            ref = u.get("passwordSecretRef") or {}
            data = self.secret_data(ref.get("name", ""))
            if data is None or ref.get("key", "password") not in data:
                return None, f"the password of user {u.get('name')} (Secret {ref.get('name')}) not found"
            out.append({"name": u["name"], "db": u.get("db", "admin"), "password": data[ref.get("key", "password")],
                        "roles": u.get("roles") or []})  # fmt: skip
        if keyfile:
            out.append({"name": "__system", "db": "local", "password": next(iter(keyfile.values())), "roles": []})
        return out, ""

    def reconcile(self, cr: dict) -> None:
        meta, spec = cr["metadata"], cr["spec"]
        cluster, ns = meta["name"], self.ns
        if meta.get("deletionTimestamp"):
            if FINALIZER in (meta.get("finalizers") or []):
                rest = [f for f in meta["finalizers"] if f != FINALIZER]
                self.api.call("PATCH", self.path(cluster), {"metadata": {"finalizers": rest}}, "application/merge-patch+json")
                log(f"{ns}/{cluster}: deleted; finalizer {FINALIZER} removed")
            return
        users, missing = self.users(cr)
        if users is None:
            self.set_status(cr, {"state": "error", "message": missing})
            return
        data = {"users.json": base64.b64encode(json.dumps(users, sort_keys=True).encode()).decode()}
        self.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
                    "metadata": {"name": users_secret(cluster), "namespace": ns, "labels": labels(cluster, "users"),
                                 "ownerReferences": owner(cr)}})  # fmt: skip
        sets = replica_sets(cr)
        shards = [(name, rs) for name, component, rs in sets if component == "mongod"]
        if not shards:
            self.set_status(cr, {"state": "error", "message": "spec.replsets is empty"})
            return
        first = shards[0][0]
        common = ["python3", DOUBLE, "member", "--port", str(PORT), "--users", f"{USERS_DIR}/users.json"]
        ready: dict[str, dict] = {}
        for name, component, rs in sets:
            hosts = member_hosts(cluster, ns, name, int(rs.get("size", 1)))
            me = f"$(POD_NAME).{cluster}-{name}.{ns}.svc.cluster.local:{PORT}"
            member = [*common, "--replset", name, "--hosts", ",".join(hosts), "--me", me]
            if name == first:  # the one store: FerretDB in the first member of the first shard (its claim)
                script = 'if [ "${POD_NAME##*-}" = 0 ]; then exec "$@" --ferretdb /usr/local/bin/ferretdb --data /data/db ' \
                    f'--store-port {STORE_PORT}; else exec "$@"; fi'  # fmt: skip
                command = ["/bin/sh", "-c", script, "member", *member]
            else:
                command = member
            claim = (rs.get("volumeSpec") or {}).get("persistentVolumeClaim")
            lab = labels(cluster, component, name)
            self.apply(service(cr, name, lab, headless=True))
            budget = pdb(cr, name, lab, rs)
            if budget:
                self.apply(budget)
            st = self.apply(statefulset(cr, name, component, rs, command, claim)) or {}
            ready[name] = self.readiness(st, int(rs.get("size", 1)))
            ready[name] |= {"clusterRole": "configsvr" if component == "cfg" else "shardsvr"}
            if component == "mongod":
                ready[name]["added_as_shard"] = ready[name]["initialized"]
        mongos_spec = (spec.get("sharding") or {}).get("mongos") or {}
        shard_arg = ";".join(f"{n}/" + ",".join(member_hosts(cluster, ns, n, int(rs.get("size", 1)))) for n, rs in shards)
        balancer = "on" if ((spec.get("sharding") or {}).get("balancer") or {}).get("enabled", True) else "off"
        upstream = f"{cluster}-{first}-0.{cluster}-{first}.{ns}.svc.cluster.local:{STORE_PORT}"
        router = ["python3", DOUBLE, "mongos", "--port", str(PORT), "--users", f"{USERS_DIR}/users.json",
                  "--upstream", upstream, "--shards", shard_arg, "--balancer", balancer]  # fmt: skip
        lab = labels(cluster, "mongos")
        self.apply(service(cr, "mongos", lab, headless=False, expose=mongos_spec.get("expose")))
        budget = pdb(cr, "mongos", lab, mongos_spec)
        if budget:
            self.apply(budget)
        st = self.apply(statefulset(cr, "mongos", "mongos", mongos_spec, router, None)) or {}
        routers = self.readiness(st, int(mongos_spec.get("size", 1)))
        del routers["initialized"]  # not in the CRD's status.mongos (the API server would prune it)
        done = all(r["status"] == "ready" for r in ready.values()) and routers["status"] == "ready"
        status = {
            "state": "ready" if done else "initializing",
            # the CRD requires the pod counts of the whole cluster
            "size": sum(r["size"] for r in ready.values()) + routers["size"],
            "ready": sum(r["ready"] for r in ready.values()) + routers["ready"],
            "replsets": ready,
            "mongos": routers,
            "host": f"{cluster}-mongos.{ns}.svc.cluster.local",
            "observedGeneration": meta.get("generation"),
        }
        self.set_status(cr, status)

    @staticmethod
    def readiness(st: dict, size: int) -> dict:
        n = int((st.get("status") or {}).get("readyReplicas") or 0)
        return {"size": size, "ready": n, "status": "ready" if n >= size else "initializing", "initialized": n >= size}

    def set_status(self, cr: dict, status: dict) -> None:
        old = cr.get("status") or {}
        if all(old.get(k) == v for k, v in status.items()):
            return
        status = {
            "size": 0,
            "ready": 0,
            **status,
            "conditions": [{"type": status["state"], "status": "True", "lastTransitionTime": now()}],
        }
        self.api.call("PATCH", self.path(cr["metadata"]["name"]) + "/status", {"status": status}, "application/merge-patch+json")
        log(f"{self.ns}/{cr['metadata']['name']}: {status['state']} {status.get('message', '')}".rstrip())

    def run(self) -> None:
        log(f"watching PerconaServerMongoDB objects in namespace {self.ns}")
        while True:
            try:
                items = (self.api.call("GET", self.path()) or {}).get("items", [])
            except Exception as e:  # the API server restarting (429, refused): the next round retries
                log(f"listing PerconaServerMongoDB objects: {e}")
                items = []
            for cr in items:
                try:
                    self.reconcile(cr)
                except Exception as e:  # one object's trouble never stops the others
                    log(f"{self.ns}/{cr['metadata']['name']}: {e}")
            time.sleep(POLL_S)


def main() -> int:
    serve_probes()  # the chart's probes (/healthz on 8081) and metrics port
    namespace = os.environ.get("WATCH_NAMESPACE") or Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text()
    Controller(Api(), namespace.strip()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
