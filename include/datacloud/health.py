"""Health probes for ``platform_health``: one sentence per problem, skipped when not provisioned.

Which probes run depends on what exists:

* **local** (always, where configured): Airflow's own health endpoint, MongoDB
  (FerretDB locally, mongos on the cluster) answers a ping, the Spark master
  accepts connections when ``DATACLOUD_SPARK_TARGET=standalone``.
* **cluster** (only after the stage that installs the component has recorded
  itself in :mod:`datacloud.platform_state`; otherwise "skipped"): every
  inventory node is Ready (kubernetes), Ceph is not in HEALTH_ERR (storage),
  the sharded MongoDB's shards and mongos are ready (mongo), the spark-operator
  Deployments are available (spark), the JupyterHub hub is up (jupyter),
  Prometheus is up (monitoring). They read the cluster through
  :class:`datacloud.kube.Kube` (kubectl on the control plane over SSH), the same
  way the stages do.

``run_probes`` returns a :class:`Finding` per probe; ``check`` logs them and
raises :class:`PlatformUnhealthy` whose message is one sentence per problem.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from datacloud import config
from datacloud.errors import UserError
from datacloud.platform_state import PlatformState, load_state

log = logging.getLogger(__name__)

# Namespaces and names the stages use (storage/mongo and spark/jupyter/monitoring).
ROOK_NS = "rook-ceph"
MONGO_NS = "mongo"
MONGO_CLUSTER = "datacloud-mongo"
SPARK_OPERATOR_NS = "spark-operator"
JUPYTER_NS = "jupyter"
MONITORING_NS = "monitoring"


class PlatformUnhealthy(UserError):
    """At least one probe found a problem.

    A UserError so the task fails at once without retries: the next scheduled
    run (10 minutes later) is the retry, and a red run is the alert.
    """


class Skipped(Exception):
    """A probe that does not apply here (component not provisioned or not configured)."""


class KubeReader(Protocol):
    def get_json(self, kind: str, name: str | None = None, *, namespace: str | None = None,
                 selector: str | None = None) -> Any: ...


@dataclass(frozen=True)
class Finding:
    probe: str
    status: str  # "ok" | "problem" | "skipped"
    detail: str  # what was seen (ok), the reason (skipped) or the problem sentences (problem)
    problems: tuple[str, ...] = ()


@dataclass
class HealthContext:
    """Everything a probe may look at; tests replace the parts that reach out."""

    state: PlatformState
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    inventory_path: str | None = None
    kube_factory: Callable[[Any], Any] | None = None
    mongo_uri: Callable[[], str | None] | None = None
    timeout: float = 5.0
    _inv: Any = None
    _kube: Any = None

    def inventory(self) -> Any:
        if self._inv is None:
            from datacloud.inventory import load_inventory

            self._inv = load_inventory(config.resolve_inventory_path(self.inventory_path))
        return self._inv

    def kube(self) -> KubeReader:
        if self._kube is None:
            factory = self.kube_factory
            if factory is None:
                from datacloud.kube import Kube

                factory = Kube
            self._kube = factory(self.inventory())
        return self._kube

    def close(self) -> None:
        if self._kube is not None and hasattr(self._kube, "close"):
            self._kube.close()
        self._kube = None


# --- helpers ------------------------------------------------------------------------------------


def redact(uri: str) -> str:
    """A URI without its password, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _http_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own configured URL
        return json.load(resp)


def _requires(ctx: HealthContext, stage: str, what: str) -> None:
    if not ctx.state.provisioned(stage):
        raise Skipped(f"{what} is not provisioned (the {stage} stage has not run)")


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def replicas_ready(obj: Mapping[str, Any]) -> tuple[int, int]:
    """(ready, wanted) of a Deployment or StatefulSet (replicas), or a DaemonSet (scheduled pods)."""
    status = obj.get("status") or {}
    if obj.get("kind") == "DaemonSet":
        return int(status.get("numberReady") or 0), int(status.get("desiredNumberScheduled") or 0)
    return int(status.get("readyReplicas") or 0), int((obj.get("spec") or {}).get("replicas", 1))


def _workloads_ready(items: list[Mapping[str, Any]], what: str) -> list[str]:
    """Deployments/StatefulSets/DaemonSets: every one has all its replicas ready."""
    if not items:
        return [f"no {what} workload was found."]
    problems = []
    for obj in items:
        name = obj.get("metadata", {}).get("name", "?")
        ready, want = replicas_ready(obj)
        if ready < want:
            problems.append(f"{what} {obj.get('kind', 'workload').lower()} {name} has {ready} of {want} replicas ready.")
    return problems


# --- local probes -------------------------------------------------------------------------------


def probe_airflow(ctx: HealthContext) -> tuple[str, list[str]]:
    base = ctx.env.get("AIRFLOW__API__BASE_URL")
    if not base:
        raise Skipped("AIRFLOW__API__BASE_URL is not set")
    url = base.rstrip("/") + "/api/v2/monitor/health"
    try:
        body = _http_json(url, ctx.timeout)
    except (OSError, ValueError) as exc:
        return "", [f"the Airflow API at {base} does not answer its health check ({exc})."]
    problems = []
    seen = []
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        status = (body.get(part) or {}).get("status")
        if status is None:
            continue
        seen.append(part)
        if status != "healthy":
            beat = next((v for k, v in (body.get(part) or {}).items() if k.startswith("latest") and v), None)
            since = f" (latest heartbeat {beat})" if beat else ""
            problems.append(f"Airflow's {part.replace('_', ' ')} is {status}{since}.")
    return f"{', '.join(seen)} healthy", problems


def _default_mongo_uri(env: Mapping[str, str]) -> str | None:
    if env.get("DATACLOUD_MONGO_URI"):
        return env["DATACLOUD_MONGO_URI"]
    try:
        from airflow.providers.mongo.hooks.mongo import MongoHook

        return MongoHook(mongo_conn_id=config.MONGO_CONN_ID).uri
    except Exception as exc:  # noqa: BLE001 - no connection defined is a finding, not a crash
        log.info("Health | no %s connection (%s)", config.MONGO_CONN_ID, exc)
        return None


def probe_mongo(ctx: HealthContext) -> tuple[str, list[str]]:
    """MongoDB answers a ping through the datacloud_mongo connection (FerretDB locally, mongos on the cluster)."""
    uri = ctx.mongo_uri() if ctx.mongo_uri else _default_mongo_uri(ctx.env)
    if not uri:
        raise Skipped(f"neither DATACLOUD_MONGO_URI nor the {config.MONGO_CONN_ID} connection is set")
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    ms = int(ctx.timeout * 1000)
    try:
        with MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, appname="datacloud-health") as client:
            client.admin.command("ping")
    except PyMongoError as exc:
        first = str(exc).split(",")[0].split(" (configured")[0]
        return "", [f"MongoDB at {redact(uri)} is unreachable ({first})."]
    return f"{redact(uri)} answers ping", []


def probe_spark_master(ctx: HealthContext) -> tuple[str, list[str]]:
    target = ctx.env.get("DATACLOUD_SPARK_TARGET", "local")
    if target != "standalone":
        raise Skipped(f"the Spark target is {target}, not standalone")
    master = ctx.env.get("DATACLOUD_SPARK_MASTER", "")
    parts = urlsplit(master)
    if parts.scheme != "spark" or not parts.hostname or not parts.port:
        return "", [f"DATACLOUD_SPARK_MASTER must look like spark://host:7077, not {master!r}."]
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=ctx.timeout):
            pass
    except OSError as exc:
        return "", [f"the Spark master at {master} does not accept connections ({exc.strerror or exc})."]
    return f"{master} accepts connections", []


# --- cluster probes -----------------------------------------------------------------------------


def probe_nodes(ctx: HealthContext) -> tuple[str, list[str]]:
    _requires(ctx, "kubernetes", "Kubernetes")
    nodes = (ctx.kube().get_json("nodes") or {}).get("items", [])
    by_name = {n["metadata"]["name"]: n for n in nodes}
    problems = [p for p in (node_problem(node, by_name.get(node.name)) for node in ctx.inventory().nodes) if p]
    return f"{len(by_name)} node(s) Ready", problems


def node_problem(node: Any, obj: Mapping[str, Any] | None) -> str | None:
    """One sentence when the inventory node NODE is not a Ready member (OBJ: its Node object or None)."""
    if obj is None:
        return f"node {node.name} ({node.address}) is not a member of the cluster."
    ready = _conditions(obj).get("Ready", {})
    if ready.get("status") == "True":
        return None
    why = ready.get("reason") or "no Ready condition"
    msg = (ready.get("message") or "").rstrip(".")
    return f"node {node.name} ({node.address}) is NotReady ({why}{': ' + msg if msg else ''})."


def probe_ceph(ctx: HealthContext) -> tuple[str, list[str]]:
    _requires(ctx, "storage", "storage")
    if ctx.state.facts("storage").get("backend") == "local-path":
        raise Skipped("storage is local-path (too few Ceph disks), there is no Ceph")
    items = (ctx.kube().get_json("cephcluster", namespace=ROOK_NS) or {}).get("items", [])
    if not items:
        return "", [f"there is no CephCluster in namespace {ROOK_NS}."]
    ceph = (items[0].get("status") or {}).get("ceph") or {}
    health = ceph.get("health", "unknown")
    checks = ceph.get("details") or {}
    summary = "; ".join(f"{k}: {(v or {}).get('message', '')}".strip(": ") for k, v in sorted(checks.items()))
    if health == "HEALTH_OK":
        return "HEALTH_OK", []
    if health == "HEALTH_WARN":
        log.warning("Health | Ceph | HEALTH_WARN%s", f" ({summary})" if summary else "")
        return f"HEALTH_WARN ({summary or 'no details'})", []
    return "", [f"Ceph reports {health}{' (' + summary + ')' if summary else ''}."]


def probe_mongo_shards(ctx: HealthContext) -> tuple[str, list[str]]:
    """The operator's view of the sharded cluster: every shard replica set and mongos ready."""
    _requires(ctx, "mongo", "the sharded MongoDB")
    obj = ctx.kube().get_json("perconaservermongodb", MONGO_CLUSTER, namespace=MONGO_NS)
    if obj is None:
        return "", [f"the sharded MongoDB {MONGO_NS}/{MONGO_CLUSTER} does not exist."]
    status = obj.get("status") or {}
    all_sets = status.get("replsets") or {}
    replsets = {k: v for k, v in all_sets.items() if k != "cfg"}  # cfg is the config server, not a shard
    expected = ctx.state.facts("mongo").get("shards") or ctx.inventory().components.mongo.shards
    problems = []
    if len(replsets) < expected:
        problems.append(f"mongos lists {len(replsets)} shard(s), expected {expected}.")
    for name, rs in sorted(all_sets.items()):
        if rs.get("status") != "ready" or rs.get("ready", 0) < rs.get("size", 0):
            problems.append(f"MongoDB replica set {name} has {rs.get('ready', 0)} of {rs.get('size', '?')} members ready.")
    mongos = status.get("mongos") or {}
    if not mongos.get("ready"):
        problems.append(f"no mongos is ready ({mongos.get('ready', 0)} of {mongos.get('size', '?')}).")
    return f"{len(replsets)} shard(s), {mongos.get('ready', 0)} mongos ready", problems


def probe_spark_operator(ctx: HealthContext) -> tuple[str, list[str]]:
    _requires(ctx, "spark", "Spark")
    deps = (ctx.kube().get_json("deployments", namespace=SPARK_OPERATOR_NS,
                                selector="app.kubernetes.io/name=spark-operator") or {}).get("items", [])
    return f"{len(deps)} deployment(s) available", _workloads_ready(deps, "spark-operator")


def probe_jupyterhub(ctx: HealthContext) -> tuple[str, list[str]]:
    _requires(ctx, "jupyter", "JupyterHub")
    hub = ctx.kube().get_json("deployment", "hub", namespace=JUPYTER_NS)
    if hub is None:
        return "", [f"the JupyterHub hub deployment is missing in namespace {JUPYTER_NS}."]
    return "hub ready", _workloads_ready([hub], "JupyterHub")


def probe_prometheus(ctx: HealthContext) -> tuple[str, list[str]]:
    _requires(ctx, "monitoring", "monitoring")
    sets = (ctx.kube().get_json("statefulsets", namespace=MONITORING_NS,
                                selector="app.kubernetes.io/name=prometheus") or {}).get("items", [])
    return f"{len(sets)} statefulset(s) ready", _workloads_ready(sets, "Prometheus")


PROBES: dict[str, Callable[[HealthContext], tuple[str, list[str]]]] = {
    "airflow": probe_airflow,
    "mongodb": probe_mongo,
    "spark_master": probe_spark_master,
    "nodes": probe_nodes,
    "ceph": probe_ceph,
    "mongo_shards": probe_mongo_shards,
    "spark_operator": probe_spark_operator,
    "jupyterhub": probe_jupyterhub,
    "prometheus": probe_prometheus,
}


Probe = Callable[[HealthContext], tuple[str, list[str]]]


def run_probes(ctx: HealthContext, probes: Mapping[str, Probe] | None = None) -> list[Finding]:
    findings = []
    try:
        for name, probe in (probes if probes is not None else PROBES).items():
            try:
                detail, problems = probe(ctx)
            except Skipped as why:
                findings.append(Finding(name, "skipped", str(why)))
                continue
            except UserError as exc:  # e.g. the inventory is invalid: say so, keep probing
                problems, detail = [str(exc)], ""
            except Exception as exc:  # noqa: BLE001 - a probe that cannot look is a problem, not a crash
                problems, detail = [f"the {name} probe could not run ({type(exc).__name__}: {exc})."], ""
            status = "problem" if problems else "ok"
            findings.append(Finding(name, status, " ".join(problems) if problems else detail, tuple(problems)))
    finally:
        ctx.close()
    return findings


def check(inventory: str | None = None, *, ctx: HealthContext | None = None) -> dict[str, Any]:
    """Probe everything, log one line per probe, raise PlatformUnhealthy listing every problem."""
    ctx = ctx or HealthContext(state=load_state(), inventory_path=inventory)
    findings = run_probes(ctx)
    for f in findings:
        level = logging.ERROR if f.status == "problem" else logging.INFO
        log.log(level, "Health | %-14s | %-7s | %s", f.probe, f.status, f.detail)
    problems = [p for f in findings for p in f.problems]
    summary = {f.probe: f.status for f in findings}
    if problems:
        raise PlatformUnhealthy(f"{len(problems)} problem(s): " + " ".join(problems))
    ok = sum(1 for f in findings if f.status == "ok")
    log.info("Health | %d probe(s) ok, %d skipped", ok, len(findings) - ok)
    return summary
