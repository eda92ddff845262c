"""
### platform_health

Probes every part of the platform every 10 minutes and **fails with one
sentence per problem** (paused when created: unpause it once you rely on it).

* **Locally:** Airflow's own health, MongoDB (FerretDB) answers a ping, the
  Spark master accepts connections when `DATACLOUD_SPARK_TARGET=standalone`.
* **On the cluster**, once the stage that installs each part has run: nodes
  Ready, Ceph not in HEALTH_ERR, MongoDB shards and mongos ready, spark-operator
  available, JupyterHub's hub up, Prometheus up. Parts not provisioned yet are
  reported as *skipped*, not failed.
* **Changes:** nothing; it only reads.
* **Retry:** none on purpose; the next run 10 minutes later is the retry.
  Read the failed task's log: one line per probe, the problems in red.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from datacloud.dag_defaults import DEFAULT_ARGS, START


@dag(
    dag_id="platform_health",
    schedule=timedelta(minutes=10),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    dagrun_timeout=timedelta(minutes=9),
    default_args=DEFAULT_ARGS,
    tags=["datacloud", "health"],
    doc_md=__doc__,
    params={
        "inventory": Param(
            None,
            type=["null", "string"],
            title="Inventory file",
            description="The inventory of the provisioned cluster (for the cluster probes only). "
            "Empty: inventory.yaml in the project folder, else inventory.example.yaml.",
        ),
    },
)
def platform_health():
    @task(execution_timeout=timedelta(minutes=5))
    def probe(params=None) -> dict:
        from datacloud import health
        from datacloud.errors import fail_fast

        with fail_fast():
            return health.check(params["inventory"])

    probe()


platform_health()
