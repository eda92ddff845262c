"""An operator's path through the Airflow UI, in a real headless Chromium.

Each case: sign in, open a Dag's trigger form, fill the Params, trigger, wait
until the run is green in the grid, open a task's log, take screenshots for
docs/img/. The REST API then confirms what the browser saw.
"""

from __future__ import annotations

import json
import shutil

import pytest
from datacloud import config, platform_state
from datacloud.api import AirflowAPI

IMG_DIR = config.REPO_ROOT / "docs" / "img"


def test_inventory_report_from_the_trigger_form(airflow_stack, airflow_api: AirflowAPI, run_ui, tmp_path):
    inventory = tmp_path / "my-cluster.yaml"
    shutil.copy(config.REPO_ROOT / "inventory.example.yaml", inventory)
    # Two stages have run on this "platform": their links appear, JupyterHub's does not.
    state_file = airflow_stack.data_dir / "platform" / "state.json"
    platform_state.record_stage("monitoring", path=state_file, services={
        "grafana": "http://192.168.1.1:30300", "prometheus": "http://192.168.1.1:30090", "headlamp": "http://192.168.1.1:30400"})
    platform_state.record_stage("spark", path=state_file, services={"spark_history": "http://192.168.1.1:31808"})
    airflow_api.wait_for_dag("inventory_report")
    try:
        result = run_ui({
            "base_url": airflow_stack.airflow_url,
            "username": "admin",
            "password": airflow_stack.admin_password(),
            "dag_id": "inventory_report",
            "nav": {"menu": "Plugins", "category": "Platform"},
            "params": [{"name": "inventory", "kind": "text", "value": str(inventory)}],
            "task": {"task_id": "report", "log_contains": [f"Inventory | {inventory} is valid: 5 nodes", "Capacity |"]},
            "screenshots": {
                "nav": str(IMG_DIR / "platform-links.png"),
                "form": str(IMG_DIR / "inventory_report-trigger.png"),
                "grid": str(IMG_DIR / "inventory_report-grid.png"),
                "log": str(IMG_DIR / "inventory_report-log.png"),
            },
        })
    finally:
        platform_state.forget(path=state_file)

    assert result["nav"] == [
        {"name": "Grafana", "href": "http://192.168.1.1:30300"},
        {"name": "Spark History Server", "href": "http://192.168.1.1:31808"},
        {"name": "Headlamp (Kubernetes)", "href": "http://192.168.1.1:30400"},
        {"name": "Prometheus", "href": "http://192.168.1.1:30090"},
    ]
    assert result["conf"] == {"inventory": str(inventory)}  # what the form sent
    assert result["state"] == "success"
    run = airflow_api.run("inventory_report", result["run_id"])
    assert run["state"] == "success"
    assert run["conf"] == {"inventory": str(inventory)}
    for shot in result["screenshots"]:
        assert (IMG_DIR / shot.rsplit("/", 1)[-1]).stat().st_size > 10_000


def test_platform_health_from_the_ui(airflow_stack, airflow_api: AirflowAPI, run_ui):
    """Paused by default; triggered from the UI it runs green on the local stack, one log line per probe."""
    airflow_api.wait_for_dag("platform_health")
    assert airflow_api._request("GET", "/api/v2/dags/platform_health")["is_paused"] is True
    try:
        result = run_ui({
            "base_url": airflow_stack.airflow_url,
            "username": "admin",
            "password": airflow_stack.admin_password(),
            "dag_id": "platform_health",
            "params": [],
            "task": {"task_id": "probe", "log_contains": ["Health | airflow", "Health | mongodb", "| skipped |",
                                                          "Health | 2 probe(s) ok, 7 skipped"]},
            "screenshots": {"log": str(IMG_DIR / "platform_health-log.png")},
        })
    finally:
        airflow_api._request("PATCH", "/api/v2/dags/platform_health", {"is_paused": True})
    assert result["conf"] == {"inventory": None}  # the optional field stays empty
    assert result["state"] == "success"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two real SSH nodes in network namespaces (tests/lab), removed afterwards."""
    from tests.lab.lab import Lab

    lab = Lab(2, tmp_path_factory.mktemp("lab")).up()
    try:
        yield lab
    finally:
        lab.down()


def test_provision_platform_dry_run_against_the_lab(airflow_stack, airflow_api: AirflowAPI, run_ui, lab):
    # What an operator sets up once: the SSH connection and the per-node pool.
    conn = {"connection_id": "datacloud_ssh", "conn_type": "ssh", "login": "datacloud",
            "extra": json.dumps({"key_file": str(lab.key_file)})}
    airflow_api._request("POST", "/api/v2/connections", conn)
    airflow_api._request("POST", "/api/v2/pools", {"name": "datacloud_nodes", "slots": 8})
    airflow_api.wait_for_dag("provision_platform")
    stages = ["preflight", "gateway", "node_prep", "kubernetes", "network", "verify"]
    try:
        result = run_ui({
            "base_url": airflow_stack.airflow_url,
            "username": "admin",
            "password": airflow_stack.admin_password(),
            "dag_id": "provision_platform",
            "timeout_s": 150,
            "params": [
                {"name": "inventory", "kind": "text", "value": str(lab.inventory_path)},
                {"name": "stages", "kind": "multiselect", "value": stages},
                {"name": "dry_run", "kind": "boolean", "value": True},
                # the form marks an empty string as missing, so the version is set explicitly
                {"name": "kubernetes_version", "kind": "text", "value": lab.inventory()["cluster"]["kubernetes_version"]},
            ],
            # one mapped node task: node_prep on the second node
            "task": {"task_id": "node_prep.prepare", "map_index": 1, "log_contains": ["node_prep | n2 | would change"]},
            "screenshots": {
                "form": str(IMG_DIR / "provision_platform-trigger.png"),
                "grid": str(IMG_DIR / "provision_platform-grid.png"),
                "log": str(IMG_DIR / "provision_platform-node-log.png"),
            },
        }, timeout=220)
    finally:
        airflow_api._request("DELETE", "/api/v2/connections/datacloud_ssh")
        airflow_api._request("DELETE", "/api/v2/pools/datacloud_nodes")

    assert result["conf"]["dry_run"] is True
    assert result["conf"]["stages"] == stages
    assert result["state"] == "success"
    tis = airflow_api.task_instances("provision_platform", result["run_id"])
    prepared = sorted(t["map_index"] for t in tis if t["task_id"] == "node_prep.prepare")
    assert prepared == [0, 1]  # one task instance per node
    assert {t["state"] for t in tis} <= {"success", "skipped"}
    # a dry run changed nothing inside the nodes
    for node in lab.nodes:
        assert not node.path("/etc/modules-load.d/datacloud-k8s.conf").exists()
    assert [c for c in lab.calls() if c.get("tool") == "kubeadm" and c.get("argv", [None])[:1] in (["init"], ["join"])] == []
