"""A SparkSession on the datacloud cluster from a notebook, in one call.

    from datacloud_spark import spark_session
    spark = spark_session("my-analysis")
    df = spark.read.format("mongodb").option("collection", "daily_delay_stats").load()

Spark runs in client mode: the driver is this notebook's kernel, executors are pods
in the notebook's namespace (the pod's ServiceAccount may manage exactly those).
Everything comes from the environment the spawner sets (manifests/jupyter): the
driver Service and ports, the namespace, the executor image and sizes, and the
MongoDB URI from the `notebook-mongo` Secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

API_SERVER = "k8s://https://kubernetes.default.svc:443"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DATABASE = "datacloud"
REQUIRED = ("SPARK_DRIVER_HOST", "SPARK_KUBERNETES_NAMESPACE", "SPARK_EXECUTOR_IMAGE")


class NotInNotebookPod(RuntimeError):
    """The helper runs outside a datacloud JupyterHub user pod."""


def session_conf(app_name: str = "notebook", env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Spark configuration for a notebook driver (pure: reads only ``env``)."""
    env = os.environ if env is None else env
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        raise NotInNotebookPod(
            f"{', '.join(missing)} not set: spark_session() works inside a datacloud JupyterHub user pod; "
            "elsewhere build a SparkSession yourself"
        )
    conf = {
        "spark.master": API_SERVER,
        "spark.submit.deployMode": "client",
        "spark.app.name": app_name,
        "spark.kubernetes.namespace": env["SPARK_KUBERNETES_NAMESPACE"],
        "spark.kubernetes.container.image": env["SPARK_EXECUTOR_IMAGE"],
        # A digest pins the content (IfNotPresent is safe); a tag alone may be pushed again (Always),
        # as datacloud.images.pull_policy decides for the platform's own pods.
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent" if "@sha256:" in env["SPARK_EXECUTOR_IMAGE"] else "Always",
        "spark.kubernetes.authenticate.caCertFile": f"{SA_DIR}/ca.crt",
        "spark.kubernetes.authenticate.oauthTokenFile": f"{SA_DIR}/token",
        "spark.driver.host": env["SPARK_DRIVER_HOST"],
        "spark.driver.bindAddress": "0.0.0.0",  # noqa: S104 - executors connect to the pod
        "spark.driver.port": env.get("SPARK_DRIVER_PORT", "7078"),
        "spark.blockManager.port": env.get("SPARK_BLOCK_MANAGER_PORT", "7079"),
        "spark.kubernetes.executor.label.spark-role": "executor",
        "spark.kubernetes.executor.label.datacloud/notebook-executor": "true",
        "spark.executor.cores": env.get("SPARK_EXECUTOR_CORES", "1"),
        "spark.executor.memory": env.get("SPARK_EXECUTOR_MEMORY", "640m"),
        "spark.executor.memoryOverhead": env.get("SPARK_EXECUTOR_MEMORY_OVERHEAD", "384m"),
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.minExecutors": env.get("SPARK_MIN_EXECUTORS", "0"),
        "spark.dynamicAllocation.maxExecutors": env.get("SPARK_MAX_EXECUTORS", "2"),
        "spark.dynamicAllocation.executorIdleTimeout": "120s",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    if env.get("JUPYTERHUB_POD_NAME"):
        # Executors are owned by the notebook pod: stopping the server removes them.
        conf["spark.kubernetes.driver.pod.name"] = env["JUPYTERHUB_POD_NAME"]
    if env.get("JUPYTERHUB_USER"):
        user = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in env["JUPYTERHUB_USER"])[:63].strip("-_.")
        if user:
            conf["spark.kubernetes.executor.label.hub.jupyter.org/username"] = user
    if env.get("MONGODB_URI"):
        conf["spark.mongodb.read.connection.uri"] = env["MONGODB_URI"]
        conf["spark.mongodb.write.connection.uri"] = env["MONGODB_URI"]
        conf["spark.mongodb.read.database"] = DATABASE
        conf["spark.mongodb.write.database"] = DATABASE
    return conf


def spark_session(app_name: str = "notebook", **overrides: str):
    """A SparkSession on the cluster (``overrides``: extra Spark settings, dots as keys via **{...})."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in {**session_conf(app_name), **overrides}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
