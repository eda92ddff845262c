"""node_prep: every node ready for kubeadm (swap, modules, sysctl, containerd, pinned kube packages).

Runs ``include/scripts/node-prep.sh`` on each node (mapped, one task per node).
Packages come from ``packages.repository`` when the inventory names one (a
private mirror: every package from there), else from the node's own apt
sources plus the pkgs.k8s.io repository of the pinned Kubernetes minor.
"""

from __future__ import annotations

from datacloud.inventory import Inventory, Node
from datacloud.stages._common import StageContext, Step, all_nodes, outcome


def _kube() -> dict:
    from datacloud.render import versions

    return versions()["kubernetes"]


def package_versions(kubernetes_version: str | None = None) -> dict[str, str]:
    """The exact Debian versions node_prep installs (kubelet=1.34.2-1.1, helm=3.19.2-1)."""
    k = _kube()
    kv = kubernetes_version or str(k["version"])
    pkg = f"{kv}-{k['package_revision']}"
    return {"kubelet": pkg, "kubeadm": pkg, "kubectl": pkg, "helm": f"{k['helm']}-{k['helm_package_revision']}"}


def minor(kubernetes_version: str) -> str:
    return ".".join(kubernetes_version.split(".")[:2])


def private_source(inv: Inventory) -> str | None:
    """The apt source line of the inventory's package repository (values validated by the inventory)."""
    p = inv.packages
    if p.repository is None:
        return None
    options = "[trusted=yes] " if p.trusted else ""
    return f"deb {options}{p.repository} {p.suite}{''.join(' ' + c for c in p.components)}".rstrip()


def apt_env(inv: Inventory) -> dict[str, str]:
    """APT_SOURCE and APT_KEY_URL for the Kubernetes packages."""
    source = private_source(inv)
    if source is not None:
        return {"APT_SOURCE": source, "APT_KEY_URL": ""}
    k = _kube()
    m = minor(inv.cluster.kubernetes_version)
    keyring = "/etc/apt/keyrings/datacloud-kubernetes.gpg"
    return {
        "APT_SOURCE": f"deb [signed-by={keyring}] {k['apt_repository'].format(minor=m)} /",
        "APT_KEY_URL": k["apt_key"].format(minor=m),
    }


def runtime_env(inv: Inventory, node: Node) -> dict[str, str]:
    """containerd and kubelet settings of the inventory (values validated there)."""
    mirrors = "\n".join(f"{host} {' '.join(urls)}" for host, urls in sorted(inv.containerd.registry_mirrors.items()))
    return {
        "CGROUP_DRIVER": inv.kubernetes.cgroup_driver,
        "RESTRICT_OOM_SCORE_ADJ": "1" if inv.containerd.restrict_oom_score_adj else "0",
        "REGISTRY_MIRRORS": mirrors,
        "CGROUP_ROOT": inv.cgroup_root(node) or "",
    }


def env_for(ctx: StageContext, node: Node | None = None) -> dict[str, str]:
    return {
        **ctx.env,
        **apt_env(ctx.inv),
        **runtime_env(ctx.inv, node or ctx.inv.control_plane),
        "K8S_PKG_VERSION": package_versions(ctx.inv.cluster.kubernetes_version)["kubeadm"],
        "SANDBOX_IMAGE": str(_kube()["sandbox_image"]),
    }


def prepare(ctx: StageContext, node: Node) -> dict:
    with ctx.remote(node) as r:
        res = r.script("node-prep.sh", env=env_for(ctx, node))
    return outcome("node_prep", node.name, res.changes, ctx.dry_run, node=node.name, packages=res.facts)


STEPS = [Step("prepare", prepare, nodes=all_nodes)]
