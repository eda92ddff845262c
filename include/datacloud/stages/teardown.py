"""teardown: remove the Kubernetes cluster from every node (platform_teardown's steps; not a provisioning stage).

``confirm`` must equal the inventory's cluster name. Each node gets
``kubeadm reset`` and loses the files datacloud wrote for Kubernetes;
packages and node preparation stay. Then every node is checked clean and the
connection ``datacloud_kube`` and the recorded platform state (datacloud.platform_state)
are removed, so no stage counts as provisioned and no link points at a service that is gone.
"""

from __future__ import annotations

import logging

from datacloud import config
from datacloud.errors import TransientError, UserError
from datacloud.inventory import Node
from datacloud.stages._common import StageContext, Step, all_nodes, outcome

log = logging.getLogger(__name__)


def confirm(ctx: StageContext) -> dict:
    name = ctx.inv.cluster.name
    if ctx.params.confirm != name:
        raise UserError(f"Param confirm is {ctx.params.confirm!r}; type the cluster name {name!r} to tear the cluster down.")
    log.info("teardown | Confirm | tearing down cluster %s on %d node(s)", name, len(ctx.inv.nodes))
    return outcome("teardown", "confirm", [], ctx.dry_run, cluster=name)


def reset(ctx: StageContext, node: Node) -> dict:
    with ctx.remote(node) as r:
        res = r.script("teardown.sh", env=ctx.env)
    return outcome("teardown", node.name, res.changes, ctx.dry_run, node=node.name, left=res.facts.get("left", ""))


def verify(ctx: StageContext, results: list[dict]) -> dict:
    left = {r["node"]: r["left"] for r in results if r and r.get("left")}
    if left and not ctx.dry_run:
        raise TransientError("still present: " + "; ".join(f"{n}: {files}" for n, files in sorted(left.items())))
    changes = []
    if not ctx.dry_run:
        from datacloud import connections

        if connections.delete(config.KUBE_CONN_ID):
            changes.append(f"remove the Airflow connection {config.KUBE_CONN_ID}")
        from datacloud import platform_state

        gone = platform_state.forget()
        if gone:
            changes.append(f"forget the recorded platform state ({', '.join(gone)})")
    log.info("teardown | Verify | %d node(s) clean", len(ctx.inv.nodes))
    return outcome("teardown", "verify", changes, ctx.dry_run)


STEPS = [Step("confirm", confirm), Step("reset", reset, nodes=all_nodes), Step("verify", verify, previous=True)]
