"""Inventories for the storage/mongo tests: the thesis cluster and variants of it."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from datacloud.config import REPO_ROOT
from datacloud.inventory import Inventory, parse_inventory


def reference_data() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "inventory.example.yaml").read_text())


def reference() -> Inventory:
    return parse_inventory(reference_data(), "inventory.example.yaml")


def three_nodes() -> Inventory:
    """Three 16 GB machines, one Ceph disk each, the first also the control plane
    (three 8 GB machines do not fit the 60 % budget with Ceph)."""
    nodes = [
        {
            "name": f"n{i}",
            "address": f"10.20.0.{10 + i}",
            "roles": ["control-plane", "worker"] if i == 1 else ["worker"],
            "cpu": 4,
            "memory_gb": 16,
            "disks": [{"device": "/dev/sda", "size_gb": 500}, {"device": "/dev/nvme0n1", "size_gb": 1000, "use": "ceph"}],
        }
        for i in (1, 2, 3)
    ]
    return parse_inventory(
        {
            "network": {"subnet": "10.20.0.0/24", "own_uplink": True},
            "nodes": nodes,
            "components": {"mongo": {"shards": 1}},
        },
        "three-nodes",
    )


def local_path() -> Inventory:
    """The thesis cluster with a single Ceph disk left: storage falls back to local-path."""
    data = reference_data()
    for node in data["nodes"][1:]:
        for disk in node["disks"]:
            disk["use"] = "none"
    return parse_inventory(data, "local-path")


def with_mongo(**settings: Any) -> Inventory:
    data = copy.deepcopy(reference_data())
    data["components"]["mongo"].update(settings)
    return parse_inventory(data, "mongo-variant")


def thesis_four_shards() -> Inventory:
    """The thesis's MongoDB layout: 4 shards x 3 members + 3 config servers."""
    return with_mongo(shards=4, replicas=3, config_replicas=3)
