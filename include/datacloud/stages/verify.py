"""verify: the cluster as the inventory describes it — node count and readiness, CoreDNS ready,
every workload the platform's stages made (label app.kubernetes.io/part-of=datacloud) ready —
with a summary table."""

from __future__ import annotations

import json
import logging

from datacloud.errors import TransientError
from datacloud.health import node_problem, replicas_ready
from datacloud.stages._common import StageContext, Step, outcome

log = logging.getLogger(__name__)

PART_OF = "app.kubernetes.io/part-of=datacloud"
WORKLOAD_KINDS = "deployments,statefulsets,daemonsets"


def _ready(node: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", []))


def summary(ctx: StageContext) -> dict:
    if ctx.dry_run:
        log.info("verify | Summary | dry run: nothing was changed, nothing to verify")
        return outcome("verify", "summary", [], True)
    with ctx.kube() as kube:
        nodes = {n["metadata"]["name"]: n for n in (kube.get_json("nodes") or {}).get("items", [])}
        coredns = kube.get_json("deployment", "coredns", namespace="kube-system") or {}
        workloads = _platform_workloads(kube)
    rows = [f"{'node':<14} {'address':<15} {'roles':<24} {'kubelet':<10} ready", "-" * 72]
    problems = []
    for n in ctx.inv.nodes:
        obj = nodes.get(n.name)
        ok = obj is not None and _ready(obj)
        version = (obj or {}).get("status", {}).get("nodeInfo", {}).get("kubeletVersion", "-")
        rows.append(f"{n.name:<14} {n.address!s:<15} {','.join(n.roles):<24} {version:<10} {'yes' if ok else 'NO'}")
        problem = node_problem(n, obj)
        if problem:
            problems.append(problem.rstrip("."))
    ready_dns = int(coredns.get("status", {}).get("readyReplicas") or 0)
    rows.append(f"CoreDNS: {ready_dns}/{coredns.get('spec', {}).get('replicas', '?')} ready")
    if workloads:
        rows += ["", f"{'workload':<52} ready"]
    short = []
    for obj in workloads:
        meta = obj["metadata"]
        ready, want = replicas_ready(obj)
        rows.append(f"{meta.get('namespace', '-') + '/' + obj['kind'].lower() + '/' + meta['name']:<52} {ready}/{want}")
        if ready < want:
            short.append(f"{obj['kind']} {meta.get('namespace')}/{meta['name']} has {ready} of {want} ready")
    log.info("verify | Summary |\n%s", "\n".join(rows))
    if ready_dns < 1:
        problems.append("CoreDNS has no ready replica")
    problems += short
    if len(nodes) != len(ctx.inv.nodes):
        problems.append(f"the cluster has {len(nodes)} nodes, the inventory {len(ctx.inv.nodes)}")
    if problems:
        raise TransientError("; ".join(problems))
    return outcome("verify", "summary", [], False, nodes=len(nodes), coredns_ready=ready_dns, workloads=len(workloads))


def _platform_workloads(kube) -> list[dict]:
    """The Deployments, StatefulSets and DaemonSets of every namespace that carry the platform's label."""
    res = kube.kubectl(
        "get", WORKLOAD_KINDS, "--all-namespaces", "--selector", PART_OF, "--output", "json", check=False, quiet=True
    )
    if res.rc != 0:
        raise TransientError(f"could not list the platform's workloads: {res.stderr.strip()[:300]}")
    items = json.loads(res.stdout or "{}").get("items") or []
    return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["kind"], o["metadata"]["name"]))


STEPS = [Step("summary", summary)]
