"""Item 9 of issue 12: the local stack listens on loopback only; stages use their own API user, whose connection
lives in the metadata DB, not in any process environment; ./dev env prints no password."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from datacloud import cli, connections, localstack
from datacloud.localstack import STAGES_USER, Stack


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(data_dir=tmp_path / "data", airflow_port=18080, mongo_port=17017, spark_port=17077, spark_ui_port=18081)


def _started(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Start every service with process creation and waiting replaced: name -> (argv, env)."""
    started: dict[str, tuple[list[str], dict[str, str]]] = {}
    binary = tmp_path / "ferretdb"
    binary.touch()
    monkeypatch.setattr(localstack, "ferretdb_binary", lambda: binary)
    monkeypatch.setattr(localstack, "spark_jars", lambda: [tmp_path / "mongo-spark-connector.jar"])
    monkeypatch.setattr(localstack, "port_open", lambda *a, **k: False)
    monkeypatch.setattr(Stack, "_start", lambda self, name, argv, env, cwd=None: started.setdefault(name, (argv, env)))
    monkeypatch.setattr(Stack, "_wait", lambda *a, **k: None)
    monkeypatch.setattr(Stack, "running", lambda self, name: None)
    monkeypatch.setattr(Stack, "ensure_pools", lambda self: None)
    monkeypatch.setattr(Stack, "ensure_api_connection", lambda self: None)
    stack.up(spark=True)
    return started


def test_every_service_of_the_stack_binds_loopback(stack: Stack, monkeypatch, tmp_path: Path) -> None:
    started = _started(stack, monkeypatch, tmp_path)
    assert set(started) == {"ferretdb", "spark-connect", "spark-master", "spark-worker", "airflow"}
    ferret_argv = started["ferretdb"][0]
    assert f"--listen-addr=127.0.0.1:{stack.mongo_port}" in ferret_argv and "--debug-addr=-" in ferret_argv
    for name in ("spark-master", "spark-worker"):
        argv, env = started[name]
        assert argv[argv.index("--host") + 1] == "127.0.0.1", name
        assert env["SPARK_LOCAL_IP"] == "127.0.0.1", name  # the Spark web UIs bind to SPARK_LOCAL_IP
    connect_argv, connect_env = started["spark-connect"]
    assert "spark.connect.grpc.binding.address=127.0.0.1" in connect_argv  # Spark Connect's default is every address
    assert f"spark.connect.grpc.binding.port={stack.connect_port}" in connect_argv
    assert "spark.connect.grpc.port.maxRetries=0" in connect_argv  # the recorded port or fail, never a neighbour
    assert "spark.ui.enabled=false" in connect_argv
    assert connect_env["SPARK_LOCAL_IP"] == "127.0.0.1"
    airflow_env = started["airflow"][1]
    assert airflow_env["AIRFLOW__API__HOST"] == "127.0.0.1"  # the API server's default is 0.0.0.0
    assert airflow_env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"


def test_stages_write_connections_as_their_own_op_user_not_admin(stack: Stack, monkeypatch) -> None:
    stored: list[tuple] = []
    monkeypatch.setattr(connections, "put", lambda conn_id, conn_type, **kw: stored.append((conn_id, conn_type, kw)))
    env = stack.env()
    users = dict(u.split(":") for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert users == {"admin": "admin", STAGES_USER: "op"}
    stack.ensure_api_connection()
    passwords = json.loads(stack.password_file.read_text())
    [(conn_id, conn_type, fields)] = stored
    assert (conn_id, conn_type) == ("datacloud_airflow_api", "http")
    assert fields["login"] == STAGES_USER and fields["password"] == passwords[STAGES_USER]
    assert fields["host"] == stack.airflow_url and fields["api"].username == "admin"  # stored by the admin, in the DB
    assert stat.S_IMODE(os.stat(stack.password_file).st_mode) == 0o600


def test_no_password_is_in_the_environment_of_airflow_and_its_tasks(stack: Stack, monkeypatch, tmp_path: Path) -> None:
    started = _started(stack, monkeypatch, tmp_path)
    passwords = json.loads(stack.password_file.read_text())  # written before airflow standalone starts
    assert set(passwords) == {"admin", STAGES_USER}
    for name, (_, env) in started.items():
        text = json.dumps(env)
        assert "AIRFLOW_CONN_DATACLOUD_AIRFLOW_API" not in text, name
        assert not [p for p in passwords.values() if p in text], name


def test_op_is_the_least_role_that_writes_connections() -> None:
    """The simple auth manager (forced by airflow standalone) has no per-connection role; op is the least that writes."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = SimpleAuthManager()
    for role, may_write in (("viewer", False), ("user", False), ("op", True)):
        user = SimpleAuthManagerUser(username="u", role=role)
        assert manager.is_authorized_connection(method="POST", user=user) is may_write, role
    op = SimpleAuthManagerUser(username=STAGES_USER, role="op")
    # what op can still do (docs/security.md): every connection, variable and pool, and trigger any DAG
    assert manager.is_authorized_connection(method="DELETE", user=op)
    assert manager.is_authorized_variable(method="PUT", user=op)
    assert manager.is_authorized_pool(method="POST", user=op)
    assert manager.is_authorized_dag(method="POST", user=op)


def test_an_older_password_file_gains_the_stages_user_and_keeps_the_admin(stack: Stack) -> None:
    stack.airflow_home.mkdir(parents=True)
    stack.password_file.write_text(json.dumps({"admin": "the-old-admin-password"}))
    passwords = stack.ensure_passwords()
    assert passwords["admin"] == "the-old-admin-password" and len(passwords[STAGES_USER]) >= 24
    assert json.loads(stack.password_file.read_text()) == passwords
    assert stack.ensure_passwords() == passwords


def test_dev_env_prints_no_password(stack: Stack, monkeypatch, capsys) -> None:
    monkeypatch.setattr(localstack, "Stack", lambda: stack)
    stack.ensure_passwords()
    assert cli.cmd_env(None) == 0
    out = capsys.readouterr().out
    passwords = json.loads(stack.password_file.read_text())
    assert passwords and all(p not in out for p in passwords.values())
    assert "AIRFLOW_CONN_DATACLOUD_AIRFLOW_API" not in out and "export AIRFLOW_HOME=" in out


def test_the_connect_server_is_one_bounded_jvm_with_the_connector(stack: Stack, monkeypatch, tmp_path: Path) -> None:
    started = _started(stack, monkeypatch, tmp_path)
    argv, _ = started["spark-connect"]
    assert argv[0].endswith("/bin/spark-submit")
    assert argv[argv.index("--class") + 1] == "org.apache.spark.sql.connect.service.SparkConnectServer"
    assert argv[argv.index("--master") + 1] == "local[2]"
    assert argv[argv.index("--driver-memory") + 1] == localstack.CONNECT_MEMORY == "2g"
    assert argv[argv.index("--jars") + 1] == str(tmp_path / "mongo-spark-connector.jar")


def test_the_connect_port_is_chosen_once_and_recorded(stack: Stack, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(localstack, "port_open", lambda *a, **k: False)
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(stack.data_dir))  # the developer's own stack prefers 15002
    assert stack.connect_port == 15002  # before the first start: the port it would take
    assert stack._choose_connect_port() == 15002
    assert stack.connect_port_file.read_text().strip() == "15002"
    other = Stack(data_dir=tmp_path / "other")  # any other stack (tests) takes a free port
    chosen = other._choose_connect_port()
    assert chosen != 15002 and other.connect_port == chosen
    assert Stack(data_dir=tmp_path / "other").connect_port == chosen  # recorded: ./dev env and a restart agree
    monkeypatch.setattr(localstack, "port_open", lambda *a, **k: True)
    monkeypatch.setattr(localstack.time, "sleep", lambda s: None)
    with pytest.raises(localstack.UserError, match=f"port {chosen} \\(recorded in .*spark-connect.port\\) is already in use"):
        other._choose_connect_port()


def test_the_stack_makes_the_spark_connect_connection_and_targets_it(stack: Stack, monkeypatch) -> None:
    monkeypatch.delenv("DATACLOUD_SPARK_TARGET", raising=False)
    env = stack.env()
    conn = json.loads(env["AIRFLOW_CONN_DATACLOUD_SPARK_CONNECT"])
    assert conn == {"conn_type": "spark_connect", "host": "sc://127.0.0.1", "port": stack.connect_port}
    assert env["DATACLOUD_SPARK_TARGET"] == "connect"
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", "local")  # the user's choice wins
    assert stack.env()["DATACLOUD_SPARK_TARGET"] == "local"
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", "yarn")
    with pytest.raises(localstack.UserError, match="DATACLOUD_SPARK_TARGET must be one of connect, local"):
        stack.env()
