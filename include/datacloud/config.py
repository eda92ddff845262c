"""Paths, connection ids and environment names shared by the whole package.

Nothing here does I/O at import time: DAG files import this module while the
scheduler parses them.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = REPO_ROOT / "include" / "scripts"
JOBS_DIR = REPO_ROOT / "include" / "jobs"
MANIFESTS_DIR = REPO_ROOT / "manifests"

# Connection ids: secrets live only behind these (Airflow Connections, or
# AIRFLOW_CONN_* environment variables locally).
SSH_CONN_ID = "datacloud_ssh"
MONGO_CONN_ID = "datacloud_mongo"
KUBE_CONN_ID = "datacloud_kube"
SPARK_CONN_ID = "datacloud_spark"
# A kubeconfig with the token of a namespaced ServiceAccount (spark-jobs) that may only submit
# and watch SparkApplications: what the kubernetes target of the flights transform submits with.
SPARK_SUBMIT_CONN_ID = "datacloud_kubernetes_spark"
# The Spark Connect server (the provider's spark_connect connection type).
SPARK_CONNECT_CONN_ID = "datacloud_spark_connect"

MONGO_DATABASE = "datacloud"

# Per-node provisioning tasks run in this pool. The scheduler never runs tasks of a
# pool that does not exist, so `./dev up` creates it (REST API) and an administrator
# of another Airflow creates it once: airflow pools set datacloud_nodes 10 "datacloud per-node tasks"
NODES_POOL = "datacloud_nodes"
NODES_POOL_SLOTS = 10


def data_dir() -> Path:
    """Where local state lives (landing zone, FerretDB files, Airflow home)."""
    return Path(os.environ.get("DATACLOUD_DATA_DIR", REPO_ROOT / ".data"))


def cache_dir() -> Path:
    """Downloads and builds shared by every clone on this machine."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "datacloud"


def default_inventory() -> Path:
    """inventory.yaml when the administrator wrote one, else the thesis cluster."""
    own = REPO_ROOT / "inventory.yaml"
    return own if own.exists() else REPO_ROOT / "inventory.example.yaml"


INVENTORY_DIRS_ENV = "DATACLOUD_INVENTORY_DIRS"
INVENTORY_SUFFIXES = (".yaml", ".yml")


def inventory_dirs() -> list[Path]:
    """Where inventory files may live: the project folder, the data folder (the lab writes
    its inventory there) and the folders an administrator lists in DATACLOUD_INVENTORY_DIRS
    (separated by ':')."""
    extra = [Path(p) for p in os.environ.get(INVENTORY_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    return [p.resolve() for p in (REPO_ROOT, data_dir(), *extra)]


def resolve_inventory_path(value: str | os.PathLike[str] | None) -> Path:
    """A relative inventory path is taken from the repository root. The path, after
    symlinks, must name a .yaml/.yml file inside one of :func:`inventory_dirs`: a trigger
    form cannot point the platform at /dev/zero, a FIFO or a secret elsewhere on the host."""
    from datacloud.errors import InventoryError

    if not value:
        return default_inventory()
    path = Path(value)
    path = path if path.is_absolute() else REPO_ROOT / path
    text = str(value)
    shown = text if len(text) <= 80 else text[:77] + "..."
    if "\x00" in text or "\n" in text:
        raise InventoryError(f"inventory path {shown!r} contains a control character; use a plain file path.")
    if path.suffix not in INVENTORY_SUFFIXES:
        raise InventoryError(f"inventory path {shown} does not end in .yaml or .yml; name the inventory like inventory.yaml.")
    real = path.resolve()
    dirs = inventory_dirs()
    if not any(real.is_relative_to(d) for d in dirs):
        raise InventoryError(
            f"inventory path {shown} is outside the inventory folders ({', '.join(map(str, dirs))}); "
            f"move it into the project folder or add its folder to {INVENTORY_DIRS_ENV}."
        )
    return real
