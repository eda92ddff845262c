"""Inventories and rendered output shared by the spark/jupyter/monitoring tests."""

from __future__ import annotations

import functools
from typing import Any

from datacloud.config import REPO_ROOT
from datacloud.inventory import Inventory, load_inventory, parse_inventory_text
from datacloud.render import Rendered
from datacloud.stages import jupyter, monitoring, spark

APP_STAGES = {"spark": spark, "jupyter": jupyter, "monitoring": monitoring}

THREE_NODES = """
network: {subnet: 10.0.0.0/24, gateway: cp}
nodes:
  - {name: cp, address: 10.0.0.10, roles: [control-plane, worker], cpu: 4, memory_gb: 16,
     disks: [{device: /dev/sdb, size_gb: 500, use: ceph}]}
  - {name: w1, address: 10.0.0.11, cpu: 4, memory_gb: 16, disks: [{device: /dev/sdb, size_gb: 500, use: ceph}]}
  - {name: w2, address: 10.0.0.12, cpu: 4, memory_gb: 16, disks: [{device: /dev/sdb, size_gb: 500, use: ceph}]}
components:
  mongo: {shards: 3}
  spark: {min_executors: 0, max_executors: 6}
"""

SMALL_LOCAL_PATH = """
network: {own_uplink: true}
nodes:
  - {name: solo, address: 192.168.1.5, roles: [control-plane, worker], cpu: 8, memory_gb: 32}
components:
  mongo: {shards: 1, replicas: 1, config_replicas: 1, mongos: 1}
"""


@functools.cache
def inventories() -> dict[str, Inventory]:
    return {
        "reference": load_inventory(REPO_ROOT / "inventory.example.yaml"),
        "three-nodes": parse_inventory_text(THREE_NODES),
        "single-local-path": parse_inventory_text(SMALL_LOCAL_PATH),
    }


@functools.cache
def rendered(inv_name: str) -> dict[str, Rendered]:
    inv = inventories()[inv_name]
    return {name: mod.render(inv) for name, mod in APP_STAGES.items()}


def all_objects(inv_name: str) -> list[dict[str, Any]]:
    return [o for r in rendered(inv_name).values() for o in r.all_objects()]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
