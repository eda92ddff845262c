"""An operator's path through the Airflow UI, in a real headless Chromium.

Each case: sign in, open a Dag's trigger form, fill the Params, trigger, wait
until the run is green in the grid, open a task's log, take screenshots for
docs/img/. The REST API then confirms what the browser saw.
"""

from __future__ import annotations

import shutil

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
