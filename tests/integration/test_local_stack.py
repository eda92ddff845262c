"""The local stack through ./dev: up (FerretDB, Spark Connect, Airflow), REST API (JWT, list, trigger), status, down
leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from datacloud import localstack
from datacloud.api import AirflowAPI
from datacloud.localstack import Stack, free_port

ROOT = Path(__file__).resolve().parents[2]


def dev(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "dev"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        DATACLOUD_DATA_DIR=str(tmp_path / "data"),
        DATACLOUD_AIRFLOW_PORT=str(free_port()),
        DATACLOUD_MONGO_PORT=str(free_port()),
        DATACLOUD_SPARK_CONNECT_PORT=str(free_port()),
    )
    env.pop("DATACLOUD_SPARK_TARGET", None)
    return env


def test_up_trigger_down(isolated_env: dict[str, str]) -> None:
    stack = Stack(
        data_dir=Path(isolated_env["DATACLOUD_DATA_DIR"]),
        airflow_port=int(isolated_env["DATACLOUD_AIRFLOW_PORT"]),
        mongo_port=int(isolated_env["DATACLOUD_MONGO_PORT"]),
        spark_connect_port=int(isolated_env["DATACLOUD_SPARK_CONNECT_PORT"]),
    )
    try:
        up = dev("up", env=isolated_env)
        assert up.returncode == 0, up.stderr[-2000:]
        assert stack.airflow_url in up.stdout and str(stack.password_file) in up.stdout
        assert f"Spark Connect:   {stack.connect_url}  (flights transform target: connect)" in up.stdout
        assert "a Spark Connect query ready after" in up.stderr  # health-waited: spark.range(1).count() ran

        env_out = dev("env", env=isolated_env)
        assert f"export AIRFLOW_HOME={stack.airflow_home}" in env_out.stdout
        assert "export AIRFLOW_CONN_DATACLOUD_MONGO=" in env_out.stdout
        assert "export DATACLOUD_SPARK_TARGET=connect" in env_out.stdout
        connect_conn = next(
            x for x in env_out.stdout.splitlines() if x.startswith("export AIRFLOW_CONN_DATACLOUD_SPARK_CONNECT=")
        )
        assert '"conn_type": "spark_connect"' in connect_conn and f'"port": {stack.connect_port}' in connect_conn

        status = dev("status", env=isolated_env)
        assert status.returncode == 0, status.stderr
        for name in ("ferretdb", "spark-connect", "airflow"):
            assert f"{name}" in status.stdout and f"running (pgid {stack.running(name)})" in status.stdout, status.stdout
        assert stack.connect_url in status.stdout
        connect_pid = stack.running("spark-connect")
        airflow_pid = stack.running("airflow")
        assert "SPARK_CONNECT_MODE_ENABLED" not in Path(f"/proc/{airflow_pid}/environ").read_text(errors="replace")

        api = AirflowAPI(stack.airflow_url, "admin", stack.admin_password())
        assert api.token().count(".") == 2  # a JWT
        api.wait_for_dag("inventory_report")
        assert "inventory_report" in {d["dag_id"] for d in api.dags()}
        assert api.import_errors() == []
        # `up` created the pool the per-node provisioning tasks run in
        assert api.ensure_pool("datacloud_nodes", 10, "again") == "unchanged"
        api.unpause("inventory_report")
        run = api.trigger("inventory_report", conf={"inventory": "inventory.example.yaml"})
        done = api.wait_run("inventory_report", run["dag_run_id"], timeout=240)
        assert done["state"] == "success"

        # a second `up` is a no-op on a running stack
        again = dev("up", env=isolated_env)
        assert again.returncode == 0, again.stderr[-2000:]
    finally:
        down = dev("down", env=isolated_env)
    assert down.returncode == 0, down.stderr
    assert "airflow" in down.stdout and "ferretdb" in down.stdout and "spark-connect" in down.stdout
    assert stack.strays() == [], "processes of the stack survived ./dev down"
    assert not any(stack.running(name) for name in ("airflow", "spark-connect", "ferretdb"))
    assert not localstack._group_alive(connect_pid), "the Connect server's JVM survived ./dev down"  # zombies aside
    assert (stack.data_dir / "ferretdb").is_dir() and (stack.airflow_home / "airflow.db").exists(), "down must keep the data"


def test_bad_inventory_run_fails_fast_with_one_sentence(airflow_api: AirflowAPI) -> None:
    airflow_api.wait_for_dag("inventory_report")
    airflow_api.unpause("inventory_report")
    run = airflow_api.trigger("inventory_report", conf={"inventory": "no-such-inventory.yaml"})
    done = airflow_api.wait_run("inventory_report", run["dag_run_id"], timeout=240)
    assert done["state"] == "failed"
    tis = airflow_api.task_instances("inventory_report", run["dag_run_id"])
    assert [ti["try_number"] for ti in tis] == [1], "a user error must not be retried"


def test_warm_setup_skips_everything() -> None:
    out = subprocess.run([str(ROOT / "dev"), "setup"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "setup | skipped: python venv" in out.stdout
    assert "setup | installed" not in out.stdout
