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


def resolve_inventory_path(value: str | os.PathLike[str] | None) -> Path:
    """A relative inventory path is taken from the repository root."""
    if not value:
        return default_inventory()
    path = Path(value)
    return path if path.is_absolute() else REPO_ROOT / path
