"""node_prep: every node ready for kubeadm (swap, modules, sysctl, containerd, pinned kube packages).

Runs ``include/scripts/node-prep.sh`` on each node (mapped, one task per node).
Packages come from ``packages.repository`` when the inventory names one (a
private mirror: every package from there), else from the node's own apt
sources plus the pkgs.k8s.io repository of the pinned Kubernetes minor.
The repository's signing key is fetched by the node and checked here against
its pinned fingerprint (``manifests/versions.yaml``, or the inventory's
``packages.apt_key_fingerprint``) before anything is installed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from datacloud.errors import TransientError, UserError
from datacloud.inventory import Inventory, Node
from datacloud.render import kubernetes_pins
from datacloud.stages._common import StageContext, Step, all_nodes, outcome


def package_versions(kubernetes_version: str | None = None) -> dict[str, str]:
    """The exact Debian versions node_prep installs (kubelet=1.34.2-1.1, helm=3.19.2-1)."""
    k = kubernetes_pins()
    kv = kubernetes_version or str(k["version"])
    pkg = f"{kv}-{k['package_revision']}"
    return {"kubelet": pkg, "kubeadm": pkg, "kubectl": pkg, "helm": f"{k['helm']}-{k['helm_package_revision']}"}


def minor(kubernetes_version: str) -> str:
    return ".".join(kubernetes_version.split(".")[:2])


KEYRING = "/etc/apt/keyrings/datacloud-kubernetes.gpg"


def private_source(inv: Inventory) -> str | None:
    """The apt source line of the inventory's package repository (values validated by the inventory)."""
    p = inv.packages
    if p.repository is None:
        return None
    options = "[trusted=yes] " if p.trusted else f"[signed-by={KEYRING}] " if p.apt_key_url else ""
    return f"deb {options}{p.repository} {p.suite}{''.join(' ' + c for c in p.components)}".rstrip()


def apt_key(inv: Inventory) -> tuple[str, str] | None:
    """(URL, pinned fingerprint) of the key that signs the Kubernetes packages' repository, or None."""
    p = inv.packages
    if p.repository is not None:
        return (p.apt_key_url, p.apt_key_fingerprint) if p.apt_key_url and p.apt_key_fingerprint else None
    k = kubernetes_pins()
    return k["apt_key"].format(minor=minor(inv.cluster.kubernetes_version)), str(k["apt_key_fingerprint"])


def apt_env(inv: Inventory) -> dict[str, str]:
    """APT_SOURCE for the Kubernetes packages (APT_KEY, the verified key, is added by prepare)."""
    source = private_source(inv)
    if source is None:
        k = kubernetes_pins()
        m = minor(inv.cluster.kubernetes_version)
        source = f"deb [signed-by={KEYRING}] {k['apt_repository'].format(minor=m)} /"
    return {"APT_SOURCE": source, "APT_KEY": "", "APT_KEY_FINGERPRINT": ""}


# --- the repository key: fetched by the node, checked here against its pin ---------------


class AptKeyError(UserError):
    """The repository key is not the pinned one: nothing is installed."""


def _dearmor(data: bytes) -> bytes:
    """The binary OpenPGP packets of an ASCII-armored key (binary input unchanged)."""
    text = data.decode("ascii", "replace")
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in text:
        return data
    body = text.split("-----BEGIN PGP PUBLIC KEY BLOCK-----", 1)[1].split("-----END PGP PUBLIC KEY BLOCK-----", 1)[0]
    lines = body.strip().splitlines()
    if any(":" in ln for ln in lines[:5]):  # armor headers end at the first empty line
        lines = lines[lines.index("") + 1 :] if "" in lines else []
    payload = "".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith("="))
    return base64.b64decode(payload, validate=False)


def _packets(data: bytes):
    """(tag, body) of each OpenPGP packet (RFC 9580 section 4.2, old and new headers)."""
    i = 0
    while i < len(data):
        first = data[i]
        if not first & 0x80:
            raise ValueError("not an OpenPGP packet")
        if first & 0x40:  # new format
            tag, i = first & 0x3F, i + 1
            l1 = data[i]
            if l1 < 192:
                length, i = l1, i + 1
            elif l1 < 224:
                length, i = ((l1 - 192) << 8) + data[i + 1] + 192, i + 2
            elif l1 == 255:
                length, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
            else:
                raise ValueError("partial lengths do not occur in keys")
        else:
            tag, kind, i = (first >> 2) & 0x0F, first & 0x03, i + 1
            if kind == 3:
                raise ValueError("indeterminate lengths do not occur in keys")
            size = (1, 2, 4)[kind]
            length, i = int.from_bytes(data[i : i + size], "big"), i + size
        if i + length > len(data):
            raise ValueError("truncated OpenPGP packet")
        yield tag, data[i : i + length]
        i += length


def key_fingerprints(data: bytes) -> list[str]:
    """The fingerprints of the primary keys in an OpenPGP key file (v4: SHA-1, v6: SHA-256)."""
    out = []
    for tag, body in _packets(_dearmor(data)):
        if tag != 6:  # public key (subkeys are tag 14 and sign nothing without their primary)
            continue
        if body[:1] == b"\x04":
            out.append(hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body, usedforsecurity=False).hexdigest())
        elif body[:1] == b"\x06":
            out.append(hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest())
        else:
            out.append(f"version-{body[:1].hex()}-key")
    return [f.upper() for f in out]


FETCH_KEY = (
    "set -e; t=$(mktemp); trap 'rm -f \"$t\"' EXIT; "
    'if command -v curl >/dev/null; then curl -fsSL --retry 3 --max-time 60 -o "$t" "$1"; '
    'else /usr/lib/apt/apt-helper download-file "$1" "$t" >/dev/null; fi; '
    'base64 -w0 "$t"'
)


def verified_key(r, url: str, pin: str, what: str) -> str:
    """The key at ``url`` fetched by the node, as base64 of its binary packets, if it is exactly
    the one key ``pin`` names; AptKeyError (one sentence) otherwise."""
    res = r.run(["sh", "-c", FETCH_KEY, "sh", url], check=False, quiet=True, what=f"fetch {url}")
    if res.rc != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise TransientError(f"{r.label}: fetching the {what} key {url} failed ({tail})")
    try:
        binary = _dearmor(base64.b64decode(res.stdout.strip()))
        found = key_fingerprints(binary)
    except (ValueError, IndexError, binascii.Error):
        found, binary = [], b""
    if found != [pin]:
        got = ", ".join(found) if found else "no OpenPGP key"
        raise AptKeyError(
            f"{r.label}: the {what} key at {url} is {got}, not the pinned {pin}; nothing was installed "
            "(check the repository, or correct the pin if its key really changed)."
        )
    return base64.b64encode(binary).decode()


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
        "SANDBOX_IMAGE": str(kubernetes_pins()["sandbox_image"]),
    }


def prepare(ctx: StageContext, node: Node) -> dict:
    env = env_for(ctx, node)
    key = apt_key(ctx.inv)
    with ctx.remote(node) as r:
        if key is not None:
            env["APT_KEY"] = verified_key(r, key[0], key[1], "Kubernetes packages' repository")
            env["APT_KEY_FINGERPRINT"] = key[1]
        res = r.script("node-prep.sh", env=env)
    return outcome("node_prep", node.name, res.changes, ctx.dry_run, node=node.name, packages=res.facts)


STEPS = [Step("prepare", prepare, nodes=all_nodes)]
