"""The notebook helper against a real Spark Connect server with a token (pyspark 4.2's own server).

The server is the one the cluster runs (``org.apache.spark.sql.connect.service.SparkConnectServer``,
token from ``SPARK_CONNECT_AUTHENTICATE_TOKEN`` as the server pod gets it), here on
``local[1]`` bound to 127.0.0.1. The helper connects to ``127.0.0.1`` (not ``localhost``),
as a notebook connects to the Service's name: pyspark's own token handling would insist on
TLS there, which the server does not speak. The right token runs a query; a wrong one and
none are refused by the server (UNAUTHENTICATED).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datacloud.config import REPO_ROOT

HELPER = REPO_ROOT / "manifests" / "images" / "jupyter" / "datacloud_spark.py"
START_TIMEOUT_S = 120


def _helper():
    spec = importlib.util.spec_from_file_location("datacloud_spark_connect_test", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(sc:// URL, token) of a Spark Connect server started for this module, stopped after it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_urlsafe(32)
    log = tmp_path_factory.mktemp("connect") / "server.log"
    submit = Path(sys.executable).parent / "spark-submit"
    spark_home = Path(__import__("pyspark").__file__).parent
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_CONNECT_AUTHENTICATE_TOKEN": token, "SPARK_LOCAL_IP": "127.0.0.1"}
    argv = [
        str(submit), "--master", "local[1]", "--driver-memory", "512m",
        "--conf", f"spark.connect.grpc.binding.port={port}", "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        "--class", "org.apache.spark.sql.connect.service.SparkConnectServer", "spark-internal",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Spark Connect server started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Spark Connect server did not start within {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}", token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)


def _session(helper, url: str, token: str):
    from pyspark.sql.connect.session import SparkSession

    settings = helper.connect_settings("test", {"SPARK_CONNECT_URL": url, "DATACLOUD_SPARK_CONNECT_TOKEN": token})
    return SparkSession.builder.channelBuilder(helper.channel_builder(settings["url"], settings["token"])).create()


def test_the_helper_runs_a_query_with_the_token(server) -> None:
    url, token = server
    session = _session(_helper(), url, token)
    try:
        assert session.range(10).selectExpr("sum(id) AS s").collect()[0]["s"] == 45
        assert session.conf.get("spark.app.name") is not None
    finally:
        session.stop()


@pytest.mark.parametrize("token", ["a-wrong-token", None], ids=["wrong-token", "no-token"])
def test_the_server_refuses_a_wrong_or_missing_token(server, token) -> None:
    from pyspark.sql.connect.session import SparkSession

    url, _right = server
    if token is None:
        session = SparkSession.builder.remote(url).create()  # plain channel, no header
    else:
        session = _session(_helper(), url, token)
    try:
        with pytest.raises(Exception, match="UNAUTHENTICATED|Invalid authentication token"):
            session.range(3).collect()
    finally:
        session.stop()  # a session left open keeps the client's threads, and pytest's exit, waiting
