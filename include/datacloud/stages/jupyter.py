"""Stage jupyter: JupyterHub (zero-to-jupyterhub chart) wired to Spark and MongoDB.

``render(inv)`` gives the namespace, the notebook identity (ServiceAccount
``spark-notebook`` with a Role limited to executor pods in ``jupyter``), the
NetworkPolicies for driver<->executor traffic, and the chart release whose values
set: NativeAuthenticator (sign-up needs an admin's approval; never the dummy
authenticator), per-user volumes on the block StorageClass, idle culling, the
single-user image from manifests/images/jupyter, and the spawner hooks of
manifests/jupyter/spark_driver_service.py that give every user pod its Spark
driver Service.
"""

from __future__ import annotations

import logging
from typing import Any

from datacloud.config import MANIFESTS_DIR
from datacloud.inventory import Inventory
from datacloud.render import Release, Rendered, render_template, versions
from datacloud.stages import spark
from datacloud.stages.apps_common import JUPYTER_NS, netpol_context, resources, storage_classes

log = logging.getLogger(__name__)

RELEASE = "jupyterhub"
NOTEBOOK_SA = "spark-notebook"
ADMIN_USER = "datacloud-admin"
MONGO_SECRET = "notebook-mongo"  # key `uri`: created by the stage from the datacloud_mongo connection
# Labels KubeSpawner/z2jh put on user pods, and Spark on executor pods
# (manifests/monitoring/chart-labels.yaml records where they come from).
NOTEBOOK_LABELS = {"component": "singleuser-server"}
EXECUTOR_LABELS = {"spark-role": "executor", "datacloud/notebook-executor": "true"}
HOOKS_FILE = MANIFESTS_DIR / "jupyter" / "spark_driver_service.py"


def image() -> tuple[str, str]:
    name, _, tag = str(versions()["jupyter"]["image"]).rpartition(":")
    return name, tag


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def hub_release(inv: Inventory) -> Release:
    j = inv.components.jupyter
    net = netpol_context(inv)
    classes = storage_classes(inv)
    chart = versions()["jupyter"]["chart"]
    name, tag = image()
    executors = {"podSelector": {"matchLabels": EXECUTOR_LABELS}}
    values: dict[str, Any] = {
        "hub": {
            "config": {
                "JupyterHub": {"authenticator_class": "nativeauthenticator.NativeAuthenticator"},
                "Authenticator": {"admin_users": [ADMIN_USER]},
                "NativeAuthenticator": {
                    "open_signup": False,  # a new account waits for an admin's approval
                    "minimum_password_length": 12,
                    "check_common_password": True,
                    "allowed_failed_logins": 5,
                    "seconds_before_next_try": 600,
                },
            },
            "resources": resources(j.hub),
            "db": {"type": "sqlite-pvc", "pvc": {"storageClassName": classes["block"], "storage": "1Gi"}},
            "networkPolicy": {"enabled": True},
            "extraConfig": {"datacloud-spark": HOOKS_FILE.read_text()},
        },
        "proxy": {
            "service": {"type": "ClusterIP"},
            "https": {"enabled": False},
            "chp": {"resources": resources(j.proxy), "networkPolicy": {"enabled": True}},
        },
        "singleuser": {
            "image": {"name": name, "tag": tag, "pullPolicy": "IfNotPresent"},
            "serviceAccountName": NOTEBOOK_SA,
            "cpu": {"guarantee": j.user.cpu_m / 1000, "limit": max(1.0, j.user.cpu_m * 4 / 1000)},
            "memory": {"guarantee": f"{j.user.memory_mb}M", "limit": f"{j.user.limit_mb}M"},
            "storage": {
                "type": "dynamic",
                "capacity": f"{j.volume_gb}Gi",
                "dynamic": {"storageClass": classes["block"]},
                "homeMountPath": "/home/jovyan",
            },
            "startTimeout": 600,
            "extraEnv": {
                "SPARK_EXECUTOR_IMAGE": spark.image(),
                "SPARK_MIN_EXECUTORS": str(inv.components.spark.min_executors),
                "SPARK_MAX_EXECUTORS": str(inv.components.spark.max_executors),
                "SPARK_EXECUTOR_CORES": str(max(1, inv.components.spark.executor.cpu_m // 1000)),
                "SPARK_EXECUTOR_MEMORY": spark.jvm_memory(inv.components.spark.executor)[0],
                "SPARK_EXECUTOR_MEMORY_OVERHEAD": spark.jvm_memory(inv.components.spark.executor)[1],
                "MONGODB_URI": {"valueFrom": {"secretKeyRef": {"name": MONGO_SECRET, "key": "uri", "optional": True}}},
            },
            "networkPolicy": {
                "enabled": True,
                # Executors connect back to the notebook's driver and block manager.
                "ingress": [{"from": [executors], "ports": _ports(spark.DRIVER_PORT, spark.BLOCK_MANAGER_PORT)}],
                "egress": [
                    {"to": [executors], "ports": _ports(spark.BLOCK_MANAGER_PORT)},
                    {"to": [{"ipBlock": {"cidr": net["apiserver_cidr"]}}], "ports": _ports(net["apiserver_port"])},
                    {
                        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": net["mongo_ns"]}}}],
                        "ports": _ports(net["mongo_port"]),
                    },
                ],
                "egressAllowRules": {"privateIPs": False, "nonPrivateIPs": True, "dnsPortsPrivateIPs": True},
            },
        },
        "cull": {"enabled": True, "timeout": j.cull_idle_s, "every": 300, "users": False, "maxAge": 0},
        # Small-cluster profile: no image-puller DaemonSets, no user scheduler or placeholders
        # (the capacity catalogue counts hub and proxy only).
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
        "scheduling": {
            "userScheduler": {"enabled": False},
            "podPriority": {"enabled": False},
            "userPlaceholder": {"enabled": False},
        },
    }
    return Release(RELEASE, JUPYTER_NS, chart["name"], chart["repo"], str(chart["version"]), values)


def _context(inv: Inventory) -> dict[str, Any]:
    return {
        "ns": JUPYTER_NS,
        "notebook_sa": NOTEBOOK_SA,
        "notebook_labels": NOTEBOOK_LABELS,
        "executor_labels": EXECUTOR_LABELS,
        "driver_port": spark.DRIVER_PORT,
        "block_manager_port": spark.BLOCK_MANAGER_PORT,
        "net": netpol_context(inv),
    }


def render(inv: Inventory) -> Rendered:
    ctx = _context(inv)
    objects = {stem: render_template(f"jupyter/{stem}.yaml.j2", **ctx) for stem in ("namespace", "rbac", "networkpolicies")}
    return Rendered(objects=objects, releases=[hub_release(inv)])
