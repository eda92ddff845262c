"""
### inventory_report

Validates an inventory file and logs its **capacity report**: what every
platform component requests on each node against what the node can allocate.

* **Changes:** nothing. It only reads the inventory file.
* **Fails** with one sentence naming the field to fix when the inventory is
  invalid, or when the platform does not fit the machines (no retries then).
* **Retry:** clear the task after fixing the file.

Trigger it from the UI with the path of your inventory (relative paths are
taken from the project folder).
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from datacloud.dag_defaults import DEFAULT_ARGS, START


@dag(
    dag_id="inventory_report",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["datacloud", "inventory"],
    doc_md=__doc__,
    params={
        "inventory": Param(
            "inventory.example.yaml",
            type="string",
            title="Inventory file",
            description="Path of the inventory YAML; relative paths start at the project folder.",
            minLength=1,
        ),
    },
)
def inventory_report():
    @task
    def report(params=None) -> dict:
        from datacloud.errors import fail_fast
        from datacloud.reports import inventory_report as build_report

        with fail_fast():
            return build_report(params["inventory"])

    report()


inventory_report()
