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
import logging
import secrets
import urllib.parse
from typing import Any

from datacloud.config import MONGO_DATABASE
from datacloud.inventory import Inventory, MongoSettings
from datacloud.render import Release, Rendered, render_template, versions
from datacloud.stages.storage import k8s_resources, storage_classes

log = logging.getLogger(__name__)

NAMESPACE = "mongo"
CLUSTER = "datacloud-mongo"
MONGO_PORT = 27017

# Secrets the stage creates (names only here; values are generated at run time).
USERS_SECRET = f"{CLUSTER}-users"  # the operator's system users
KEYFILE_SECRET = f"{CLUSTER}-keyfile"  # internal (member) authentication
KEYFILE_KEY = "mongodb-key"
SYSTEM_USERS = (
    "MONGODB_BACKUP",
    "MONGODB_DATABASE_ADMIN",
    "MONGODB_CLUSTER_ADMIN",
    "MONGODB_CLUSTER_MONITOR",
    "MONGODB_USER_ADMIN",
)

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
    for prefix in SYSTEM_USERS:
        users[f"{prefix}_USER"] = prefix.removeprefix("MONGODB_").lower().replace("_", "-")
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
