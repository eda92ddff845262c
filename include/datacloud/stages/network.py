"""network: the CNI — Calico through the tigera-operator chart (pinned) — and wait until nodes are Ready.

Calico enforces NetworkPolicy (the platform's MongoDB, JupyterHub and
monitoring rely on it); Flannel, the thesis's choice, does not enforce
NetworkPolicy at all. Pod CIDR from ``cluster.pod_cidr``, VXLAN
encapsulation (works on any flat private network), no BGP.
"""

from __future__ import annotations

from datacloud.inventory import Inventory
from datacloud.render import Release, Rendered, render_template, versions
from datacloud.stages._common import StageContext, Step, outcome

RELEASE = "tigera-operator"
NAMESPACE = "tigera-operator"


def render(inv: Inventory) -> Rendered:
    v = versions()["network"]
    values = render_template("network/tigera-operator-values.yaml", inv=inv)[0]
    return Rendered(
        releases=[
            Release(
                name=RELEASE,
                namespace=NAMESPACE,
                chart="tigera-operator",
                repo=v["calico_chart_repo"],
                version=v["calico"],
                values=values,
            )
        ]
    )


def install(ctx: StageContext) -> dict:
    changes = []
    with ctx.kube() as kube:
        for release in render(ctx.inv).releases:
            if kube.helm_upgrade(release):
                changes.append(f"{'would install' if ctx.dry_run else 'install'} {release.chart} {release.version}")
    return outcome("network", "install", changes, ctx.dry_run)


def ready(ctx: StageContext) -> dict:
    if ctx.dry_run:
        return outcome("network", "ready", [], True)
    with ctx.kube() as kube:
        kube.wait("tigerastatus", "calico", condition="Available", timeout_s=600)
        kube.wait("node", all_=True, condition="Ready", timeout_s=600)
    return outcome("network", "ready", [], False)


STEPS = [Step("install", install), Step("ready", ready)]
