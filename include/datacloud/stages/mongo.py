"""Stage mongo: a sharded MongoDB 8.0 through the Percona Operator for MongoDB.

``render(inv)`` is pure: the operator's CRD and operator charts (pinned in
manifests/versions.yaml) and our PerconaServerMongoDB object — config server
replica set, ``components.mongo.shards`` shard replica sets, mongos routers,
anti-affinity per replica set, PodDisruptionBudgets, data on the RWO class of
the storage stage, WiredTiger cache sized from the memory limit, auth with a
keyFile. Users (admin, application, monitor) are referenced by Secret name
only: the run side generates their passwords with :mod:`secrets` into
Kubernetes Secrets and stores the application user's URI as the Airflow
connection ``datacloud_mongo``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from datacloud.config import MONGO_CONN_ID, MONGO_DATABASE
from datacloud.errors import TransientError
from datacloud.inventory import Inventory, MongoSettings
from datacloud.render import Release, Rendered, namespace_policies, render_template, versions
from datacloud.stages._common import Step, outcome
from datacloud.stages.storage import apply_or_plan, k8s_resources, storage_classes, wait_until

if TYPE_CHECKING:  # pymongo is imported where it is used: the DAG parses this module
    from pymongo import MongoClient

log = logging.getLogger(__name__)

NAMESPACE = "mongo"
CLUSTER = "datacloud-mongo"
MONGO_PORT = 27017

# Secrets the stage creates (names only here; values are generated at run time).
USERS_SECRET = f"{CLUSTER}-users"  # the operator's system users
KEYFILE_SECRET = f"{CLUSTER}-keyfile"  # internal (member) authentication
KEYFILE_KEY = "mongodb-key"
# The operator's system users (key prefix -> user name, the operator's own defaults).
SYSTEM_USERS = {
    "MONGODB_BACKUP": "backup",
    "MONGODB_DATABASE_ADMIN": "databaseAdmin",
    "MONGODB_CLUSTER_ADMIN": "clusterAdmin",
    "MONGODB_CLUSTER_MONITOR": "clusterMonitor",
    "MONGODB_USER_ADMIN": "userAdmin",
}

# Our own users, created by the operator from spec.users (authentication db admin).
USERS: tuple[dict[str, Any], ...] = (
    {
        # Runs the sharding setup and checks: cluster management, read of the
        # config database (chunk report), and ownership of the datacloud database (indexes).
        "name": "datacloud-admin",
        "secret": f"{CLUSTER}-admin",
        "roles": [
            {"name": "clusterManager", "db": "admin"},
            {"name": "clusterMonitor", "db": "admin"},
            {"name": "read", "db": "config"},
            {"name": "dbOwner", "db": MONGO_DATABASE},
        ],
    },
    {
        # The pipelines: read and write the datacloud database, nothing else.
        "name": "datacloud",
        "secret": f"{CLUSTER}-app",
        "roles": [{"name": "readWrite", "db": MONGO_DATABASE}],
    },
    {
        # The MongoDB exporter of the monitoring stage.
        "name": "datacloud-monitor",
        "secret": f"{CLUSTER}-monitor",
        "roles": [{"name": "clusterMonitor", "db": "admin"}, {"name": "read", "db": "local"}],
    },
)
ADMIN_USER, APP_USER, MONITOR_USER = (u["name"] for u in USERS)

# Who may connect to port 27017 (manifests/mongo/networkpolicies.yaml.j2).
CLIENT_NAMESPACES = ("spark-jobs", "jupyter")  # to mongos only
MONITORING_NAMESPACE = "monitoring"
# The labels the Percona operator sets on mongos pods (naming.MongosLabels in its source).
MONGOS_LABELS = {"app.kubernetes.io/component": "mongos", "app.kubernetes.io/instance": CLUSTER}
# The monitoring stage's exporters (datacloud.stages.monitoring.exporter_labels); they
# read every member as well as mongos.
EXPORTER_LABELS = {"app.kubernetes.io/name": "mongodb-exporter"}


def shard_names(m: MongoSettings) -> list[str]:
    return [f"rs{i}" for i in range(m.shards)]


def mongos_host() -> str:
    return f"{CLUSTER}-mongos.{NAMESPACE}.svc.cluster.local"


def operator_values(m: MongoSettings) -> dict[str, Any]:
    return {
        "replicaCount": 1,
        "watchAllNamespaces": False,
        "disableTelemetry": True,
        "resources": k8s_resources(m.operator),
    }


def render(inv: Inventory) -> Rendered:
    m = inv.components.mongo
    v = versions()["mongo"]
    ctx: dict[str, Any] = {
        "namespace": NAMESPACE,
        "cluster_name": CLUSTER,
        "shards": m.shards,
        "shard_names": shard_names(m),
        "replicas": m.replicas,
        "config_replicas": m.config_replicas,
        "mongos": m.mongos,
        # The operator refuses fewer than 3 (or an even number of) members, or a
        # single mongos, unless told that the inventory asked for it.
        "unsafe_replset_size": m.replicas < 3 or m.replicas % 2 == 0 or m.config_replicas < 3 or m.config_replicas % 2 == 0,
        "unsafe_mongos_size": m.mongos < 2,
        "secrets": {"users": USERS_SECRET, "keyfile": KEYFILE_SECRET},
        "wiredtiger_cache_gb": m.wiredtiger_cache_gb,
        "res": {"shard": k8s_resources(m.shard), "config": k8s_resources(m.config), "router": k8s_resources(m.router)},
        "storage_class": storage_classes(inv)["rwo"],
        "volume_gb": m.volume_gb,
        "config_volume_gb": max(2, m.volume_gb // 10),
        "node_port": m.node_port,
        "users": USERS,
    }
    crds = Release(
        name="psmdb-operator-crds",
        namespace=NAMESPACE,
        chart=v["psmdb_crds_chart"],
        repo=v["psmdb_repo"],
        version=v["psmdb_chart_version"],
    )
    operator = Release(
        name="psmdb-operator",
        namespace=NAMESPACE,
        chart=v["psmdb_operator_chart"],
        repo=v["psmdb_repo"],
        version=v["psmdb_chart_version"],
        values=operator_values(m),
    )
    return Rendered(
        objects={
            "namespace": render_template("mongo/namespace.yaml", **ctx),
            # Default deny; members, config servers, mongos and the operator talk inside the
            # namespace; Spark jobs and notebooks reach mongos only; the exporters and (through
            # an SSH forward from the control plane) Airflow reach every member; nothing else.
            "networkpolicies": namespace_policies(inv, NAMESPACE)
            + render_template(
                "mongo/networkpolicies.yaml.j2",
                namespace=NAMESPACE,
                port=MONGO_PORT,
                mongos_labels=MONGOS_LABELS,
                client_namespaces=list(CLIENT_NAMESPACES),
                monitoring_namespace=MONITORING_NAMESPACE,
                exporter_labels=EXPORTER_LABELS,
                node_subnet=str(inv.network.subnet),
            ),
            "cluster": render_template("mongo/cluster.yaml", **ctx),
        },
        releases=[crds, operator],
    )


# --- secrets: generated at run time, never rendered ---


def new_password() -> str:
    """32 URL-safe characters (192 bits) from the OS's CSPRNG."""
    return secrets.token_urlsafe(24)


def new_keyfile() -> str:
    """A MongoDB keyFile: 756 random bytes in base64 (1008 characters, the maximum is 1024)."""
    return base64.b64encode(secrets.token_bytes(756)).decode()


def secret_manifest(name: str, string_data: dict[str, str]) -> dict[str, Any]:
    """A Secret object to pipe into kubectl (stdin), never written to disk or logged."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "datacloud"}},
        "type": "Opaque",
        "stringData": string_data,
    }


def generate_secrets() -> dict[str, dict[str, str]]:
    """Every Secret the cluster needs, with fresh values: {secret name: {key: value}}."""
    out: dict[str, dict[str, str]] = {KEYFILE_SECRET: {KEYFILE_KEY: new_keyfile()}}
    users: dict[str, str] = {}
    for prefix, user in SYSTEM_USERS.items():
        users[f"{prefix}_USER"] = user
        users[f"{prefix}_PASSWORD"] = new_password()
    out[USERS_SECRET] = users
    for user in USERS:
        out[user["secret"]] = {"password": new_password()}
    return out


def app_uri(inv: Inventory, password: str, host: str | None = None, port: int | None = None) -> str:
    """The application user's URI through mongos (in-cluster DNS, or the NodePort
    on the control plane when the inventory asks for one)."""
    m = inv.components.mongo
    if host is None:
        host, port = (str(inv.control_plane.address), m.node_port) if m.node_port else (mongos_host(), MONGO_PORT)
    user = urllib.parse.quote(APP_USER, safe="")
    pw = urllib.parse.quote(password, safe="")
    return f"mongodb://{user}:{pw}@{host}:{port or MONGO_PORT}/{MONGO_DATABASE}?authSource=admin"


def airflow_connection(inv: Inventory, password: str) -> dict[str, Any]:
    """The ``datacloud_mongo`` connection (fields of Airflow's Connection)."""
    m = inv.components.mongo
    host, port = (str(inv.control_plane.address), m.node_port) if m.node_port else (mongos_host(), MONGO_PORT)
    return {
        "conn_type": "mongo",
        "host": host,
        "port": port,
        "login": APP_USER,
        "password": password,
        "schema": MONGO_DATABASE,
        "extra": {"authSource": "admin"},
    }


# --- running the stage (the STEPS of its TaskGroup; see datacloud.stages) ---

READY_TIMEOUT_S = 1800


def secret_values(kube: Any, name: str) -> dict[str, str] | None:
    """The decoded data of a Secret in the mongo namespace (never logged), or None."""
    obj = kube.get_json("secret", name, namespace=NAMESPACE)
    if obj is None:
        return None
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def step_apply(ctx: Any) -> dict[str, Any]:
    """Namespace, its NetworkPolicies, Secrets (created once, never rotated here), operator
    charts, the cluster object."""
    rendered = render(ctx.inv)
    changes: list[str] = []
    with ctx.kube() as kube:
        changes += kube.apply(rendered.objects["namespace"]).changed
        missing = bool(changes)  # in a dry run, nothing below can be diffed by the server yet
        # before anything runs in the namespace: no pod is ever reachable without its policies
        changes += apply_or_plan(kube, rendered.objects["networkpolicies"], ctx.dry_run and missing)
        for name, data in generate_secrets().items():
            if not missing and kube.exists("secret", name, namespace=NAMESPACE):
                log.info("Mongo | Secret | %s exists (unchanged)", name)
                continue
            if not ctx.dry_run:
                kube.apply([secret_manifest(name, data)])
            changes.append(f"Secret/{NAMESPACE}/{name} {'would be ' if ctx.dry_run else ''}created with generated values")
        for release in rendered.releases:
            if kube.helm_upgrade(release):
                changes.append(f"helm release {release.name} {release.chart} {release.version}")
                missing = True
        if not ctx.dry_run:
            kube.rollout_status("deployment", "psmdb-operator", namespace=NAMESPACE)
        changes += apply_or_plan(kube, rendered.objects["cluster"], ctx.dry_run and missing)
    return outcome("mongo", "apply", changes, ctx.dry_run)


def psmdb_state(obj: dict[str, Any] | None) -> tuple[bool, str]:
    if not obj:
        return False, "PerconaServerMongoDB not created yet"
    status = obj.get("status") or {}
    state = status.get("state", "unknown")
    parts = [f"state {state}"]
    for name, rs in sorted((status.get("replsets") or {}).items()):
        parts.append(f"{name} {rs.get('ready', 0)}/{rs.get('size', '?')}")
    mongos = status.get("mongos") or {}
    if mongos:
        parts.append(f"mongos {mongos.get('ready', 0)}/{mongos.get('size', '?')}")
    if status.get("message"):
        parts.append(str(status["message"]))
    return state == "ready", ", ".join(parts)


def step_ready(ctx: Any) -> dict[str, Any]:
    """Wait until the operator reports the sharded cluster ready."""
    with ctx.kube() as kube:
        if ctx.dry_run and not kube.exists("perconaservermongodb", CLUSTER, namespace=NAMESPACE):
            return outcome("mongo", "ready", [], True, state="not created yet (dry run)")
        state = wait_until(
            "Mongo | PerconaServerMongoDB",
            lambda: psmdb_state(kube.get_json("perconaservermongodb", CLUSTER, namespace=NAMESPACE)),
            READY_TIMEOUT_S,
        )
    return outcome("mongo", "ready", [], ctx.dry_run, state=state)


def _client(host: str, port: int, user: str, password: str) -> MongoClient:
    from pymongo import MongoClient

    return MongoClient(
        host=host,
        port=port,
        username=user,
        password=password,
        authSource="admin",
        authMechanism="SCRAM-SHA-256",
        directConnection=True,
        serverSelectionTimeoutMS=20_000,
        appname="datacloud-provision",
    )


def step_sharding(ctx: Any) -> dict[str, Any]:
    """Through mongos (over SSH): verify shards, members and balancer; converge sharding and
    indexes; report chunks and documents of flights per shard once data exists."""
    from datacloud import sharding
    from datacloud.forward import ssh_forward

    m = ctx.inv.components.mongo
    with ctx.kube() as kube, contextlib.ExitStack() as stack:
        service = kube.get_json("service", f"{CLUSTER}-mongos", namespace=NAMESPACE)
        admin = secret_values(kube, f"{CLUSTER}-admin")
        system = secret_values(kube, USERS_SECRET)
        if service is None or admin is None or system is None:
            if ctx.dry_run:
                return outcome("mongo", "sharding", ["would enable sharding and shard flights, daily_delay_stats"], True)
            raise TransientError("the mongos Service or the user Secrets are missing; the apply step has not finished")
        transport = kube.remote.connect().get_transport()
        host, port = stack.enter_context(ssh_forward(transport, service["spec"]["clusterIP"], MONGO_PORT))
        client = stack.enter_context(_client(host, port, ADMIN_USER, admin["password"]))

        def connect_member(hostport: str) -> MongoClient:
            pod = hostport.split(":", 1)[0].split(".", 1)[0]
            obj = kube.get_json("pod", pod, namespace=NAMESPACE) or {}
            pod_ip = (obj.get("status") or {}).get("podIP")
            if not pod_ip:
                raise TransientError(f"pod {pod} of a shard has no IP yet")
            h, p = stack.enter_context(ssh_forward(transport, pod_ip, int(hostport.rsplit(":", 1)[1])))
            return _client(h, p, system["MONGODB_CLUSTER_MONITOR_USER"], system["MONGODB_CLUSTER_MONITOR_PASSWORD"])

        status = sharding.verify_cluster(client, m.shards, connect_member)
        if ctx.dry_run:
            return outcome("mongo", "sharding", [], True, shards=status.shards)
        changes = [c for c in sharding.ensure_sharding(client) if c != "unchanged"]
        report = sharding.shard_report(client)
    loads = [{"shard": r.shard, "chunks": r.chunks, "documents": r.documents} for r in report]
    return outcome("mongo", "sharding", changes, False, shards=status.shards, flights=loads)


def publish_connection(
    conn_id: str,
    fields: dict[str, Any],
    get_current: Callable[[str], dict[str, Any] | None],
    write: Callable[[str, dict[str, Any]], None],
) -> bool:
    """Store the connection unless it already holds exactly these fields; True when written."""
    if get_current(conn_id) == fields:
        return False
    write(conn_id, fields)
    return True


def _current_fields(conn_id: str) -> dict[str, Any] | None:
    from datacloud import connections

    return connections.get(conn_id)


def _write_connection(conn_id: str, fields: dict[str, Any]) -> None:
    """Through datacloud.connections (the Airflow API, or the DB where a task may reach it)."""
    from datacloud import connections

    values = dict(fields)
    conn_type = values.pop("conn_type")
    extra = values.pop("extra", None) or {}
    connections.put(conn_id, conn_type, extra=extra, **values)


def step_connection(ctx: Any) -> dict[str, Any]:
    """The application user's URI as the Airflow connection datacloud_mongo."""
    with ctx.kube() as kube:
        app = secret_values(kube, f"{CLUSTER}-app")
    if app is None:
        if ctx.dry_run:
            return outcome("mongo", "connection", [f"would store connection {MONGO_CONN_ID}"], True)
        raise TransientError("the application user's Secret is missing; the apply step has not finished")
    fields = airflow_connection(ctx.inv, app["password"])
    if ctx.dry_run:
        same = _current_fields(MONGO_CONN_ID) == fields
        return outcome("mongo", "connection", [] if same else [f"would store connection {MONGO_CONN_ID}"], True)
    written = publish_connection(MONGO_CONN_ID, fields, _current_fields, _write_connection)
    return outcome("mongo", "connection", [f"connection {MONGO_CONN_ID} stored"] if written else [], False)


STEPS = [
    Step("apply", step_apply),
    Step("ready", step_ready),
    Step("sharding", step_sharding),
    Step("connection", step_connection),
]
