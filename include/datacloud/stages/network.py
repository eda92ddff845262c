"""network: the CNI, then wait until every node is Ready.

``network.cni`` chooses:

* ``calico`` (default): Calico through the tigera-operator chart (pinned); it
  enforces NetworkPolicy, which the platform's MongoDB, JupyterHub and
  monitoring rely on. VXLAN encapsulation, no BGP.
* ``flannel``: flanneld (vxlan or host-gw, ``network.flannel_backend``) with the
  CNI reference plugins, plus SIG Network's kube-network-policies agent
  (``network.network_policy_agent``), because flannel alone enforces no
  NetworkPolicy. Objects rendered from ``manifests/network/*.yaml.j2``.
"""

from __future__ import annotations

from datacloud.inventory import Inventory
from datacloud.render import Release, Rendered, render_template, versions
from datacloud.stages._common import StageContext, Step, outcome

RELEASE = "tigera-operator"
NAMESPACE = "tigera-operator"


def render(inv: Inventory) -> Rendered:
    v = versions()["network"]
    if inv.network.cni == "flannel":
        objects = {"flannel": render_template("network/flannel.yaml.j2", inv=inv)}
        if inv.network.network_policy_agent:
            objects["kube-network-policies"] = render_template("network/kube-network-policies.yaml.j2", inv=inv)
        return Rendered(objects=objects)
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
    rendered = render(ctx.inv)
    with ctx.kube() as kube:
        if rendered.objects:
            result = kube.apply(rendered.all_objects())
            changes += [f"{'would apply' if ctx.dry_run else 'apply'} {oid}" for oid in result.changed]
        for release in rendered.releases:
            if kube.helm_upgrade(release):
                changes.append(f"{'would install' if ctx.dry_run else 'install'} {release.chart} {release.version}")
    return outcome("network", "install", changes, ctx.dry_run, cni=ctx.inv.network.cni)


def ready(ctx: StageContext) -> dict:
    if ctx.dry_run:
        return outcome("network", "ready", [], True)
    with ctx.kube() as kube:
        if ctx.inv.network.cni == "calico":
            kube.wait("tigerastatus", "calico", condition="Available", timeout_s=600)
        for ds in (o for o in render(ctx.inv).all_objects() if o["kind"] == "DaemonSet"):  # flannel, policy agent
            kube.rollout_status("daemonset", ds["metadata"]["name"], namespace=ds["metadata"]["namespace"], timeout_s=600)
        kube.wait("node", all_=True, condition="Ready", timeout_s=600)
    return outcome("network", "ready", [], False)


STEPS = [Step("install", install), Step("ready", ready)]
