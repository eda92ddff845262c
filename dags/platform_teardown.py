"""
### platform_teardown

**Destructive.** Removes the Kubernetes cluster from every node of the
inventory: `kubeadm reset` and the files datacloud wrote for Kubernetes, per
node (mapped), then checks every node is clean and removes the connection
`datacloud_kube`. Packages and node preparation stay, so `provision_platform`
can build the cluster again.

* **Gate:** the `confirm` Param must equal the inventory's `cluster.name`;
  anything else fails at once and changes nothing.
* **Dry run:** logs what would be removed.
"""

from __future__ import annotations

from airflow.sdk import dag

from datacloud.dag_defaults import DEFAULT_ARGS, START
from datacloud.stages._dag import stage_group, teardown_params


@dag(
    dag_id="platform_teardown",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["datacloud", "destructive"],
    doc_md=__doc__,
    params=teardown_params(),
)
def platform_teardown():
    stage_group("teardown")


platform_teardown()
