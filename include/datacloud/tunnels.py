"""How to reach every platform service from outside the private network (``./dev tunnels``).

Only the gateway node reaches the internet (the thesis's network), so every
service is reached through SSH: a local port forward to the control plane, where
``kubectl port-forward`` opens the in-cluster Service. :func:`table` renders the one
table of services, ports and commands; docs/services.md embeds it for the
reference inventory (a test keeps the two equal).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from datacloud.inventory import Inventory
from datacloud.kube import ADMIN_KUBECONFIG
from datacloud.stages import jupyter, monitoring, spark
from datacloud.stages.apps_common import JUPYTER_NS, MONGO_CLUSTER, MONGO_NS, MONGO_PORT, MONITORING_NS, SPARK_JOBS_NS


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    service: str
    port: int
    local_port: int
    scheme: str = "http"
    note: str = ""
    key: str = ""  # the platform_state service key of its navigation link ("" when it has none)


def services(inv: Inventory) -> list[Service]:
    kps = monitoring.KPS_RELEASE
    return [
        Service(
            "Grafana",
            MONITORING_NS,
            f"{kps}-grafana",
            80,
            3000,
            note="user admin; password in Secret monitoring/grafana-admin",
            key="grafana",
        ),
        Service("Prometheus", MONITORING_NS, f"{kps}-prometheus", 9090, 9090, key="prometheus"),
        Service("Alertmanager", MONITORING_NS, f"{kps}-alertmanager", 9093, 9093),
        Service(
            "Headlamp",
            MONITORING_NS,
            monitoring.HEADLAMP_RELEASE,
            80,
            4466,
            note="read-only; sign in with your own token to change things",
            key="headlamp",
        ),
        Service(
            "JupyterHub",
            JUPYTER_NS,
            "proxy-public",
            80,
            8000,
            note=f"NativeAuthenticator; {jupyter.ADMIN_USER} approves new accounts",
            key="jupyterhub",
        ),
        Service("Spark History Server", SPARK_JOBS_NS, spark.HISTORY_SERVICE, spark.HISTORY_PORT, 18080, key="spark_history"),
        Service(
            "MongoDB (mongos)",
            MONGO_NS,
            f"{MONGO_CLUSTER}-mongos",
            MONGO_PORT,
            27017,
            scheme="mongodb",
            note="user and password from the datacloud_mongo connection",
        ),
    ]


def links(inv: Inventory, stage: str) -> dict[str, str]:
    """STAGE's navigation links (platform_state service key -> URL): each service's address on this host
    once `./dev tunnels` forwards it, the only way in from outside the private network."""
    from datacloud.platform_state import SERVICES

    return {s.key: url(s) for s in services(inv) if s.key and SERVICES[s.key].stage == stage}


def _ssh(inv: Inventory, forwards: list[str], remote: list[str] | None = None) -> str:
    cp = inv.control_plane
    gw = inv.gateway_node
    args = ["ssh"]
    if inv.ssh.port != 22:
        args += ["-p", str(inv.ssh.port)]
    if gw is not None and gw.name != cp.name:
        args += ["-J", f"{inv.ssh.user}@{gw.address}"]
    for f in forwards:
        args += ["-L", f]
    args.append(f"{inv.ssh.user}@{cp.address}")
    if remote:
        args += remote
    return shlex.join(args)


def _kubectl(inv: Inventory) -> list[str]:
    return (["sudo"] if inv.ssh.become else []) + ["kubectl", "--kubeconfig", ADMIN_KUBECONFIG]


def command(inv: Inventory, svc: Service) -> str:
    m = inv.components.mongo
    if svc.namespace == MONGO_NS and m.node_port:
        return _ssh(inv, [f"{svc.local_port}:{inv.control_plane.address}:{m.node_port}"], ["-N"])
    remote = [*_kubectl(inv), "port-forward", "--namespace", svc.namespace, f"svc/{svc.service}", f"{svc.local_port}:{svc.port}"]
    return _ssh(inv, [f"{svc.local_port}:127.0.0.1:{svc.local_port}"], remote)


def url(svc: Service) -> str:
    return f"{svc.scheme}://127.0.0.1:{svc.local_port}" + ("/" if svc.scheme == "http" else "")


def rows(inv: Inventory) -> list[tuple[str, str, str, str, str]]:
    out = []
    for svc in services(inv):
        where = f"{svc.namespace}/svc/{svc.service}:{svc.port}"
        out.append((svc.name, where, url(svc), f"`{command(inv, svc)}`", svc.note))
    cp = inv.control_plane
    out.append(
        (
            "Kubernetes API",
            f"{cp.name} {cp.address}:6443",
            "https://127.0.0.1:6443",
            f"`{_ssh(inv, [f'6443:{cp.address}:6443'], ['-N'])}`",
            "kubectl --server https://127.0.0.1:6443 --tls-server-name kubernetes",
        )
    )
    out.append(
        ("Airflow UI", "the admin host (not in the cluster)", "http://<admin host>:8080/", "`./dev up` there", "user admin")
    )
    return out


def table(inv: Inventory) -> str:
    """The Markdown table: service, where it lives, the URL after the tunnel, the command, notes."""
    gw = inv.gateway_node
    cp = inv.control_plane
    if gw is None:
        hop = "directly (every node has its own uplink)"
    elif gw.name == cp.name:
        hop = f"directly ({cp.name} is also the gateway); from outside the private network use its public address"
    else:
        hop = f"through the gateway {gw.name} ({gw.address}, ssh -J); from outside use the gateway's public address"
    lines = [
        f"Services of cluster {inv.cluster.name}: run a command on your workstation, leave it open, open the URL.",
        f"SSH reaches the control plane {cp.name} ({cp.address}) {hop}.",
        "",
        "| service | in the cluster | URL after the tunnel | command | notes |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(inv)]
    return "\n".join(lines)
