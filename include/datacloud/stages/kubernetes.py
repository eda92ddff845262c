"""kubernetes: kubeadm init on the control plane (once), workers joined (mapped), helm installed.

* ``init``: installs helm (pinned) on the control plane, renders
  ``manifests/kubernetes/kubeadm-config.yaml`` (version, advertise address,
  pod/service CIDRs, systemd cgroup driver) and runs ``kubeadm init`` only if
  the control plane is not initialised; stores the admin kubeconfig as the
  Airflow connection ``datacloud_kube`` (never printed).
* ``join`` (per worker): only for nodes that are not members yet, with a fresh
  join token valid for 15 minutes, created for that join and sent on stdin.
* ``registered``: every inventory node is a node of the cluster. Nodes become
  Ready once the CNI runs, which the network stage waits for.
"""

from __future__ import annotations

import logging
import re
import shlex

from datacloud import config
from datacloud.errors import TransientError, UserError
from datacloud.inventory import Inventory, Node
from datacloud.kube import ADMIN_KUBECONFIG
from datacloud.render import render_text
from datacloud.stages._common import StageContext, Step, outcome, worker_nodes
from datacloud.stages.node_prep import _kube, package_versions, private_source

log = logging.getLogger(__name__)

TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
CA_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
ENDPOINT = re.compile(r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")
JOIN_TTL = "15m"


def kubeadm_config(inv: Inventory) -> str:
    return render_text("kubernetes/kubeadm-config.yaml", inv=inv, cp=inv.control_plane)


def helm_env(inv: Inventory) -> dict[str, str]:
    k = _kube()
    env = {"HELM_PKG_VERSION": package_versions()["helm"], "HELM_APT_SOURCE": "", "HELM_APT_KEY_URL": ""}
    if private_source(inv) is None:
        env["HELM_APT_SOURCE"] = f"deb [signed-by=/etc/apt/keyrings/datacloud-helm.gpg] {k['helm_apt_repository']}"
        env["HELM_APT_KEY_URL"] = k["helm_apt_key"]
    return env


# --- the admin kubeconfig as an Airflow connection --------------------------------

def stored_kubeconfig(conn_id: str = config.KUBE_CONN_ID) -> str | None:
    from datacloud import connections

    conn = connections.get(conn_id)
    return None if conn is None else (conn["extra"] or {}).get("kube_config")


def store_kubeconfig(kubeconfig: str, cluster: str, conn_id: str = config.KUBE_CONN_ID) -> None:
    """Create or update the connection (kubernetes type, extra kube_config); see datacloud.connections."""
    from datacloud import connections

    connections.put(
        conn_id,
        "kubernetes",
        description=f"admin kubeconfig of cluster {cluster} (written by provision_platform)",
        extra={"kube_config": kubeconfig},
    )


def _mask(secret: str) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - outside a task runtime
        return
    mask_secret(secret)


# --- steps ----------------------------------------------------------------------------


def init(ctx: StageContext) -> dict:
    inv = ctx.inv
    cp = inv.control_plane
    changes: list[str] = []
    with ctx.remote(cp) as r:
        changes += r.script("install-helm.sh", env={**ctx.env, **helm_env(inv)}).changes
        res = r.script(
            "kubeadm-init.sh",
            env={**ctx.env, "CLUSTER_NAME": inv.cluster.name, "K8S_VERSION": inv.cluster.kubernetes_version},
            stdin=kubeadm_config(inv),
        )
        changes += res.changes
        initialised = r.run(["test", "-f", ADMIN_KUBECONFIG], check=False).rc == 0
        if initialised and not ctx.dry_run:
            kubeconfig = r.run(["cat", ADMIN_KUBECONFIG], quiet=True, what="read the admin kubeconfig").stdout
            _mask(kubeconfig)
            if stored_kubeconfig() != kubeconfig:
                store_kubeconfig(kubeconfig, inv.cluster.name)
                changes.append(f"store the admin kubeconfig as the Airflow connection {config.KUBE_CONN_ID}")
        elif ctx.dry_run and not initialised:
            changes.append(f"would store the admin kubeconfig as the Airflow connection {config.KUBE_CONN_ID}")
    return outcome("kubernetes", "init", changes, ctx.dry_run)


def _members(kube) -> set[str]:
    nodes = kube.get_json("nodes") or {"items": []}
    return {n["metadata"]["name"] for n in nodes.get("items", [])}


def join(ctx: StageContext, node: Node) -> dict:
    inv = ctx.inv
    with ctx.kube() as kube:
        initialised = kube.remote.run(["test", "-f", ADMIN_KUBECONFIG], check=False).rc == 0
        if not initialised:
            if ctx.dry_run:
                return outcome(
                    "kubernetes", node.name, [f"would join {node.name} (the control plane is not initialised yet)"], True
                )
            raise TransientError(f"the control plane {inv.control_plane.name} is not initialised yet")
        if node.name in _members(kube):
            log.info("kubernetes | Join | %s is already a node of the cluster", node.name)
            return outcome("kubernetes", node.name, [], ctx.dry_run, node=node.name)
        if ctx.dry_run:
            return outcome("kubernetes", node.name, [f"would join {node.name}"], True, node=node.name)
        line = kube.remote.run(
            [
                "kubeadm",
                "token",
                "create",
                "--ttl",
                JOIN_TTL,
                "--description",
                f"datacloud join of {node.name}",
                "--print-join-command",
            ],
            quiet=True,
            what="kubeadm token create",
        ).stdout.strip()
    endpoint, token, ca_hash = parse_join_command(line)
    _mask(token)
    join_config = render_text(
        "kubernetes/kubeadm-join.yaml", inv=inv, endpoint=endpoint, token=token, ca_hash=ca_hash, node=node
    )
    with ctx.remote(node) as r:
        res = r.script(
            "kubeadm-join.sh",
            env={**ctx.env, "CLUSTER_NAME": inv.cluster.name, "ENDPOINT": endpoint},
            stdin=join_config,
            check=False,
        )
    if res.rc != 0:
        raise TransientError(f"kubeadm join of {node.name} failed (exit {res.rc}); the task retries with a new token")
    return outcome("kubernetes", node.name, res.changes, ctx.dry_run, node=node.name)


def parse_join_command(line: str) -> tuple[str, str, str]:
    """(endpoint, token, ca hash) from `kubeadm token create --print-join-command`, each validated."""
    words = shlex.split(line)
    if words[:2] != ["kubeadm", "join"] or len(words) < 3:
        raise TransientError("kubeadm token create printed no join command")
    endpoint = words[2]
    token = words[words.index("--token") + 1] if "--token" in words else ""
    flag = "--discovery-token-ca-cert-hash"
    ca_hash = words[words.index(flag) + 1] if flag in words else ""
    if not (ENDPOINT.fullmatch(endpoint) and TOKEN.fullmatch(token) and CA_HASH.fullmatch(ca_hash)):
        raise TransientError("kubeadm token create printed a join command of an unexpected form")
    return endpoint, token, ca_hash


def registered(ctx: StageContext) -> dict:
    with ctx.kube() as kube:
        initialised = kube.remote.run(["test", "-f", ADMIN_KUBECONFIG], check=False).rc == 0
        if not initialised and ctx.dry_run:
            log.info("kubernetes | Nodes | the cluster does not exist yet (dry run)")
            return outcome("kubernetes", "registered", [], True)
        members = _members(kube)
    missing = [n.name for n in ctx.inv.nodes if n.name not in members]
    if missing:
        raise TransientError(f"not yet nodes of the cluster: {', '.join(missing)}")
    extra = sorted(members - {n.name for n in ctx.inv.nodes})
    if extra:
        raise UserError(f"the cluster has nodes that are not in the inventory ({', '.join(extra)}); add them or remove them.")
    log.info("kubernetes | Nodes | all %d inventory nodes are members", len(members))
    return outcome("kubernetes", "registered", [], ctx.dry_run, nodes=sorted(members))


STEPS = [Step("init", init), Step("join", join, nodes=worker_nodes), Step("registered", registered)]
