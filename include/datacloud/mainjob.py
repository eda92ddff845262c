"""``./dev run``: the main job on the embedded default.

Brings the local stack up, triggers ``inventory_report`` for the embedded
thesis inventory through the REST API, waits for success and says where to look.
"""

from __future__ import annotations

import logging

from datacloud.api import AirflowAPI
from datacloud.errors import UserError
from datacloud.localstack import Stack

log = logging.getLogger(__name__)

DAG_ID = "inventory_report"


def run() -> int:
    stack = Stack()
    stack.up()
    api = AirflowAPI(stack.airflow_url, "admin", stack.admin_password())
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    run_ = api.trigger(DAG_ID, conf={"inventory": "inventory.example.yaml"})
    print(f"triggered {DAG_ID} run {run_['dag_run_id']}")
    done = api.wait_run(DAG_ID, run_["dag_run_id"], timeout=300)
    url = f"{stack.airflow_url}/dags/{DAG_ID}/runs/{run_['dag_run_id']}"
    if done["state"] != "success":
        raise UserError(f"run {run_['dag_run_id']} of {DAG_ID} ended {done['state']}; open {url} for the task log.")
    print(f"run {run_['dag_run_id']} of {DAG_ID}: success")
    print(f"capacity report in the task log: {url}")
    print(f"Airflow UI: {stack.airflow_url} (admin, password in {stack.password_file}); stop with ./dev down")
    return 0
