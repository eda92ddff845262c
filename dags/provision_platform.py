"""
### provision_platform

Turns the machines of an inventory into the platform, stage by stage:
preflight → gateway → node_prep → kubernetes → network → (storage, mongo,
spark, jupyter, monitoring) → verify. Every stage is a TaskGroup; per-node
work is one mapped task per node (pool `datacloud_nodes`).

* **Converges:** each stage observes the machines first and changes only what
  differs; a re-run (or "clear failed task") is safe and logs "unchanged".
* **Dry run:** connects, gathers facts and logs what would change; changes nothing.
* **Secrets:** the admin kubeconfig is stored as the connection `datacloud_kube`;
  join tokens are fresh and short-lived per run. Nothing secret is logged.
* **Fails** with one sentence (no retries) for problems you fix: a bad
  inventory, an unreachable node, a changed host key, too little RAM.
* **Emits** the Asset `datacloud://platform/<stage>` when a stage finishes.
"""

from __future__ import annotations

from airflow.sdk import dag
from datacloud.dag_defaults import DEFAULT_ARGS, START
from datacloud.stages._dag import provision_params, stage_groups


@dag(
    dag_id="provision_platform",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["datacloud", "provision"],
    doc_md=__doc__,
    params=provision_params(),
)
def provision_platform():
    stage_groups()


provision_platform()
