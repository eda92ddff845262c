"""A SparkSession on the datacloud cluster from a notebook, in one call.

    from datacloud_spark import spark_session
    spark = spark_session("my-analysis")
    df = spark.read.format("mongodb").option("collection", "daily_delay_stats").load()

Spark runs in the platform's Spark Connect server (namespace spark-connect): the
notebook is a thin client and creates no pods; its pod holds no Kubernetes
credential at all. Everything comes from the environment the spawner sets
(manifests/jupyter, datacloud.stages.jupyter): the server's URL (SPARK_CONNECT_URL),
its token (DATACLOUD_SPARK_CONNECT_TOKEN, from the Secret jupyter/spark-connect-token)
and the MongoDB URI (MONGODB_URI, from the Secret notebook-mongo).

The server checks Spark Connect's pre-shared token (``authorization: Bearer``). It
speaks plain gRPC inside the cluster (Spark Connect has no TLS of its own), and
pyspark sends a token only over TLS or to ``localhost``, so the channel here adds
the header itself. The token is not in pyspark's own variable
SPARK_CONNECT_AUTHENTICATE_TOKEN: pyspark would then insist on TLS for every session.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DATABASE = "datacloud"
URL_ENV = "SPARK_CONNECT_URL"
TOKEN_ENV = "DATACLOUD_SPARK_CONNECT_TOKEN"  # noqa: S105 - a variable name
REQUIRED = (URL_ENV, TOKEN_ENV)


class NotInNotebookPod(RuntimeError):
    """The helper runs outside a datacloud JupyterHub user pod (or before the platform gave it a token)."""


def _user_id(env: Mapping[str, str]) -> str:
    user = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in env.get("JUPYTERHUB_USER", ""))[:63].strip("-_.")
    return user or "notebook"


def connect_settings(app_name: str = "notebook", env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where and as whom to connect, and the session's Spark settings (pure: reads only ``env``)."""
    env = os.environ if env is None else env
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        raise NotInNotebookPod(
            f"{', '.join(missing)} not set: spark_session() works inside a datacloud JupyterHub user pod once the "
            "spark and jupyter stages have run (the token comes from the Secret jupyter/spark-connect-token); "
            "elsewhere build a SparkSession yourself"
        )
    url = env[URL_ENV].rstrip("/")
    if not url.startswith("sc://") or ";" in url:
        raise NotInNotebookPod(f"{URL_ENV} must be sc://HOST:PORT without parameters, got {url[:80]!r}")
    conf = {"spark.app.name": app_name, "spark.sql.execution.arrow.pyspark.enabled": "true"}
    if env.get("MONGODB_URI"):
        conf["spark.mongodb.read.connection.uri"] = env["MONGODB_URI"]
        conf["spark.mongodb.write.connection.uri"] = env["MONGODB_URI"]
        conf["spark.mongodb.read.database"] = DATABASE
        conf["spark.mongodb.write.database"] = DATABASE
    return {"url": f"{url}/;user_id={_user_id(env)}", "token": env[TOKEN_ENV], "conf": conf}


def channel_builder(url: str, token: str):
    """A Spark Connect channel that sends ``authorization: Bearer <token>`` on a plain gRPC channel."""
    from pyspark.sql.connect.client import DefaultChannelBuilder

    class BearerTokenChannelBuilder(DefaultChannelBuilder):
        @property
        def token(self) -> str | None:  # pyspark would switch to TLS when it sees a token
            return None

        def metadata(self):
            return [*super().metadata(), ("authorization", f"Bearer {token}")]

    return BearerTokenChannelBuilder(url)


def spark_session(app_name: str = "notebook", **overrides: str):
    """A Spark Connect session on the platform (``overrides``: extra Spark settings, dots as keys via **{...})."""
    from pyspark.sql.connect.session import SparkSession

    settings = connect_settings(app_name)
    builder = SparkSession.builder.channelBuilder(channel_builder(settings["url"], settings["token"]))
    for key, value in {**settings["conf"], **overrides}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
