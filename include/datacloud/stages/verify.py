"""verify: the cluster as the inventory describes it — node count and readiness, CoreDNS ready,
every workload the platform's stages made (label app.kubernetes.io/part-of=datacloud) and the
operators made for them (the sharded MongoDB's, Ceph's, Prometheus's) ready, MongoDB answering a
ping as the datacloud_mongo connection's user — with a summary table."""

from __future__ import annotations

import json
import logging
import time

from datacloud.errors import TransientError
from datacloud.health import node_problem, replicas_ready
from datacloud.stages._common import StageContext, Step, outcome

log = logging.getLogger(__name__)

PART_OF = "app.kubernetes.io/part-of=datacloud"
# what the operators make from the stages' custom resources carries their labels, not ours
OPERATOR_MADE = (
    "app.kubernetes.io/managed-by=percona-server-mongodb-operator",
    "app.kubernetes.io/managed-by=rook-ceph-operator",
    "app.kubernetes.io/managed-by=prometheus-operator",
)
WORKLOAD_SELECTORS = (PART_OF, *OPERATOR_MADE)
WORKLOAD_KINDS = "deployments,statefulsets,daemonsets"
MONGO_PING_TIMEOUT_MS = 10_000


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
        mongo_row, mongo_problem = _mongo_ping(kube)
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
    if mongo_row:
        rows += ["", mongo_row]
    log.info("verify | Summary |\n%s", "\n".join(rows))
    if ready_dns < 1:
        problems.append("CoreDNS has no ready replica")
    problems += short
    if mongo_problem:
        problems.append(mongo_problem)
    if len(nodes) != len(ctx.inv.nodes):
        problems.append(f"the cluster has {len(nodes)} nodes, the inventory {len(ctx.inv.nodes)}")
    if problems:
        raise TransientError("; ".join(problems))
    return outcome(
        "verify", "summary", [], False, nodes=len(nodes), coredns_ready=ready_dns, workloads=len(workloads),
        mongo_ping="ok" if mongo_row else "no sharded MongoDB",
    )  # fmt: skip


def _platform_workloads(kube) -> list[dict]:
    """The Deployments, StatefulSets and DaemonSets of every namespace that carry the platform's label or
    an operator's (WORKLOAD_SELECTORS), each once."""
    found: dict[tuple[str, str, str], dict] = {}
    for selector in WORKLOAD_SELECTORS:
        res = kube.kubectl(
            "get", WORKLOAD_KINDS, "--all-namespaces", "--selector", selector, "--output", "json", check=False, quiet=True
        )
        if res.rc != 0:
            raise TransientError(f"could not list the platform's workloads: {res.stderr.strip()[:300]}")
        for o in json.loads(res.stdout or "{}").get("items") or []:
            found.setdefault((o["metadata"].get("namespace", ""), o["kind"], o["metadata"]["name"]), o)
    return [found[k] for k in sorted(found)]


def _mongo_ping(kube) -> tuple[str | None, str | None]:
    """(summary row, problem) of a ping to mongos as the datacloud_mongo connection's user, over an SSH
    forward from the control plane to the mongos Service (the way the stages reach it); (None, None)
    when the cluster has no sharded MongoDB (the mongo stage has not run)."""
    from datacloud import connections
    from datacloud.config import MONGO_CONN_ID
    from datacloud.forward import ssh_forward
    from datacloud.stages import mongo

    if kube.get_json("perconaservermongodb", mongo.CLUSTER, namespace=mongo.NAMESPACE) is None:
        return None, None
    conn = connections.get(MONGO_CONN_ID)
    if not conn or not conn.get("login"):
        return "MongoDB: no connection", f"the connection {MONGO_CONN_ID} is missing (the mongo stage's connection step)"
    service = kube.get_json("service", f"{mongo.CLUSTER}-mongos", namespace=mongo.NAMESPACE) or {}
    address = (service.get("spec") or {}).get("clusterIP")
    if not address:
        return "MongoDB: no mongos Service", f"the Service {mongo.NAMESPACE}/{mongo.CLUSTER}-mongos has no cluster IP"
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    t0 = time.monotonic()
    try:
        with (
            ssh_forward(kube.remote.connect().get_transport(), address, mongo.MONGO_PORT) as (host, port),
            MongoClient(
                host=host,
                port=port,
                username=conn["login"],
                password=conn["password"],
                authSource=(conn.get("extra") or {}).get("authSource", "admin"),
                directConnection=True,
                serverSelectionTimeoutMS=MONGO_PING_TIMEOUT_MS,
                connectTimeoutMS=MONGO_PING_TIMEOUT_MS,
                appname="datacloud-verify",
            ) as client,
        ):
            client.admin.command("ping")
    except PyMongoError as exc:
        why = str(exc).split(", full error:")[0][:200]
        return "MongoDB: ping FAILED", f"mongos does not answer a ping as {conn['login']} ({MONGO_CONN_ID}): {why}"
    ms = (time.monotonic() - t0) * 1000
    return f"MongoDB: ping as {conn['login']} through mongos ({MONGO_CONN_ID}): ok in {ms:.0f} ms", None


STEPS = [Step("summary", summary)]
