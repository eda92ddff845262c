"""An operator's path through the Airflow UI, in a real headless Chromium.

Each case: sign in, open a Dag's trigger form, fill the Params, trigger, wait
until the run is green in the grid, open a task's log, take screenshots (into
out/screenshots/, or docs/img/ through tools/refresh-screenshots). The REST API then confirms what the browser saw.
"""

from __future__ import annotations

import json

import pytest

from datacloud import platform_state
from datacloud.api import AirflowAPI


def test_platform_links_and_platform_health(airflow_stack, airflow_api: AirflowAPI, run_ui):
    """Links appear for the stages that ran; platform_health is paused by default and runs green from the UI."""
    # Two stages have "run": their links appear, JupyterHub's does not.
    state_file = airflow_stack.data_dir / "platform" / "state.json"
    platform_state.record_stage("monitoring", path=state_file, services={
        "grafana": "http://127.0.0.1:3000", "prometheus": "http://127.0.0.1:9090", "headlamp": "http://127.0.0.1:4466"})
    platform_state.record_stage("spark", path=state_file, services={"spark_history": "http://127.0.0.1:18080"})
    try:
        links = run_ui({
            "base_url": airflow_stack.airflow_url,
            "username": "admin",
            "password": airflow_stack.admin_password(),
            "nav": {"menu": "Plugins", "category": "Platform"},
            "screenshots": {"nav": "platform-links.png"},
        })
    finally:
        platform_state.forget(path=state_file)
    assert links["nav"] == [
        {"name": "Grafana", "href": "http://127.0.0.1:3000"},
        {"name": "Spark History Server", "href": "http://127.0.0.1:18080"},
        {"name": "Headlamp (Kubernetes)", "href": "http://127.0.0.1:4466"},
        {"name": "Prometheus", "href": "http://127.0.0.1:9090"},
    ]

    # Nothing provisioned now: the cluster probes are skipped, the local ones pass.
    airflow_api.wait_for_dag("platform_health")
    assert airflow_api._request("GET", "/api/v2/dags/platform_health")["is_paused"] is True
    try:
        result = run_ui({
            "base_url": airflow_stack.airflow_url,
            "username": "admin",
            "password": airflow_stack.admin_password(),
            "user_data_dir": str(state_file.parent / "chromium-profile-2"),
            "dag_id": "platform_health",
            "params": [],
            "task": {"task_id": "probe", "log_contains": ["Health | airflow", "Health | mongodb", "| skipped |",
                                                          "Health | 2 probe(s) ok, 7 skipped"]},
            "screenshots": {"log": "platform_health-log.png"},
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
    # What an operator sets up once: the SSH connection (the per-node pool comes with ./dev up).
    conn = {"connection_id": "datacloud_ssh", "conn_type": "ssh", "login": "datacloud",
            "extra": json.dumps({"key_file": str(lab.key_file)})}
    airflow_api._request("POST", "/api/v2/connections", conn)
    assert airflow_api.ensure_pool("datacloud_nodes", 10, "datacloud per-node tasks") == "unchanged"
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
                "form": "provision_platform-trigger.png",
                "grid": "provision_platform-grid.png",
                "log": "provision_platform-node-log.png",
            },
        }, timeout=220)
        state_file = airflow_stack.data_dir / "platform" / "state.json"
        assert not platform_state.load_state(state_file).any_provisioned  # a dry run records nothing
        # A real run of preflight alone (it changes nothing on the nodes): the plugin's listener
        # records the stage when its last task succeeds, in the task's own process.
        real = airflow_api.trigger("provision_platform", conf={
            "inventory": str(lab.inventory_path), "stages": ["preflight"], "dry_run": False,
            "kubernetes_version": lab.inventory()["cluster"]["kubernetes_version"]})
        assert airflow_api.wait_run("provision_platform", real["dag_run_id"], timeout=120)["state"] == "success"
        recorded = platform_state.load_state(state_file)
        assert recorded.provisioned("preflight")
        assert recorded.stage("preflight")["run_id"] == real["dag_run_id"]
        assert not recorded.provisioned("node_prep")
    finally:
        airflow_api._request("DELETE", "/api/v2/connections/datacloud_ssh")
        platform_state.forget(path=airflow_stack.data_dir / "platform" / "state.json")

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
        assert not node.path("/usr/bin/kubeadm").exists()  # nothing installed, let alone a cluster made


def test_etl_flights_daily_one_day(airflow_stack, airflow_api: AirflowAPI, run_ui):
    """One day (2013-06-15) from the trigger form: logical date 2013-06-16 00:00 UTC covers that day; green.

    A day outside the first week: the e2e backfill shares this Airflow and loads 2013-01-01..03.
    """
    airflow_api.wait_for_dag("etl_flights_daily")
    result = run_ui({
        "base_url": airflow_stack.airflow_url,
        "username": "admin",
        "password": airflow_stack.admin_password(),
        "dag_id": "etl_flights_daily",
        "timeout_s": 200,
        "logical_date": {"date": "2013/06/16", "time": "00:00"},
        "params": [{"name": "max_rejected_share", "kind": "number", "value": 0.02}],
        "task": {"task_id": "quality", "log_contains": ["Quality | 2013-06-15 passed"]},
        "screenshots": {
            "form": "etl_flights_daily-trigger.png",
            "grid": "etl_flights_daily-grid.png",
            "log": "etl_flights_daily-quality-log.png",
        },
    }, timeout=260)
    assert result["conf"] == {"max_rejected_share": 0.02, "min_volume_ratio": 0.5}  # the edited field, the other default
    run = airflow_api.run("etl_flights_daily", result["run_id"])
    assert run["state"] == "success"
    assert run["logical_date"].startswith("2013-06-16T00:00:00")
    tis = airflow_api.task_instances("etl_flights_daily", result["run_id"])
    assert {t["task_id"]: t["state"] for t in tis} == {
        "land": "success", "ingest": "success", "transform": "success", "quality": "success", "publish": "success"}
