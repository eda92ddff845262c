"""kubernetes: kubeadm init on the control plane (once), workers joined (mapped), helm installed.

* ``init``: installs helm (pinned) on the control plane, renders
  ``manifests/kubernetes/kubeadm-config.yaml`` (version, advertise address,
  pod/service CIDRs, systemd cgroup driver) and runs ``kubeadm init`` only if
  the control plane is not initialised; stores the admin kubeconfig as the
  Airflow connection ``datacloud_kube`` (never printed).
* Secrets are encrypted at rest (``secretbox``): before ``kubeadm init`` the
  control plane gets ``/etc/kubernetes/encryption/config.yaml`` (0600, rendered
  from ``manifests/kubernetes/encryption-config.yaml``), which kubeadm's
  configuration hands to the API server. Its key is generated once and kept in
  the Airflow connection ``datacloud_kube_encryption`` (masked, never logged);
  a re-run reuses the key on the node (or the stored one), never a new one.
* ``join`` (per worker): only for nodes that are not members yet, with a fresh
  join token valid for 15 minutes, created for that join and sent on stdin.
* ``encryption_key``: rotates the encryption key when the kube-system Namespace
  is annotated ``datacloud/rotate-encryption-key=true`` (docs/operations.md).
* ``registered``: every inventory node is a node of the cluster. Nodes become
  Ready once the CNI runs, which the network stage waits for.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import shlex
import time
from datetime import UTC, datetime

import yaml

from datacloud import config, connections
from datacloud.errors import TransientError, UserError
from datacloud.inventory import Inventory, Node
from datacloud.kube import ADMIN_KUBECONFIG
from datacloud.render import kubernetes_pins, render_text
from datacloud.stages._common import StageContext, Step, outcome, worker_nodes
from datacloud.stages.node_prep import package_versions, private_source, verified_key

log = logging.getLogger(__name__)

TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
CA_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
ENDPOINT = re.compile(r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")
JOIN_TTL = "15m"


ENCRYPTION_CONN_ID = "datacloud_kube_encryption"
ENCRYPTION_CONFIG = "/etc/kubernetes/encryption/config.yaml"
ENCRYPTION_PROVIDER = "secretbox"  # XSalsa20-Poly1305; aescbc is weaker (CBC padding oracles)
KEY_NAME = re.compile(r"^key-[0-9]{8}t[0-9]{6}z$")
KEY_SECRET = re.compile(r"^[A-Za-z0-9+/]{43}=$")  # 32 bytes, base64


def kubeadm_config(inv: Inventory) -> str:
    return render_text("kubernetes/kubeadm-config.yaml", inv=inv, cp=inv.control_plane, encryption_config_path=ENCRYPTION_CONFIG)


# --- encryption at rest: the key, its store, the API server's configuration ---------


def new_encryption_key(now: datetime | None = None) -> dict[str, str]:
    """A fresh 32-byte secretbox key, named by the time it was made (key-20261202t185500z)."""
    when = (now or datetime.now(UTC)).strftime("%Y%m%dt%H%M%Sz")
    return {"name": f"key-{when}", "secret": base64.b64encode(secrets.token_bytes(32)).decode()}


def encryption_config(keys: list[dict[str, str]]) -> str:
    """The EncryptionConfiguration: keys[0] encrypts, every key decrypts, identity reads what is plain."""
    if not keys:
        raise ValueError("an encryption configuration needs at least one key")
    for key in keys:
        if not (KEY_NAME.fullmatch(key.get("name", "")) and KEY_SECRET.fullmatch(key.get("secret", ""))):
            raise UserError(
                f"connection {ENCRYPTION_CONN_ID} holds an encryption key that is not a name like key-20261202t185500z "
                "with a base64 32-byte secret; restore the connection from the control plane's "
                f"{ENCRYPTION_CONFIG}."
            )
    return render_text("kubernetes/encryption-config.yaml", keys=keys, provider=ENCRYPTION_PROVIDER)


def parse_encryption_config(text: str) -> list[dict[str, str]] | None:
    """The keys of a configuration this stage wrote (None when it is not one)."""
    try:
        doc = yaml.safe_load(text)
        providers = doc["resources"][0]["providers"]
        keys = providers[0][ENCRYPTION_PROVIDER]["keys"]
        return [{"name": str(k["name"]), "secret": str(k["secret"])} for k in keys] or None
    except (yaml.YAMLError, LookupError, TypeError, AttributeError):
        return None


def stored_encryption_keys(conn_id: str = ENCRYPTION_CONN_ID) -> list[dict[str, str]] | None:
    conn = connections.get(conn_id)
    keys = None if conn is None else (conn["extra"] or {}).get("keys")
    if keys:
        for key in keys:
            connections.mask(str(key.get("secret", "")))
    return keys or None


def store_encryption_keys(keys: list[dict[str, str]], cluster: str, conn_id: str = ENCRYPTION_CONN_ID) -> None:
    connections.put(
        conn_id,
        "generic",
        description=f"keys that encrypt the Secrets of cluster {cluster} in etcd (written by provision_platform; "
        "the first one encrypts); without them an etcd backup cannot be read",
        extra={"provider": ENCRYPTION_PROVIDER, "keys": keys},
    )


def encryption_keys(ctx: StageContext, r) -> tuple[list[dict[str, str]], list[str]]:
    """The keys the control plane uses: those on the node, else the stored ones, else a new one
    (stored before it is written, so a failure in between loses nothing)."""
    on_node = r.run(["cat", ENCRYPTION_CONFIG], check=False, quiet=True, what="read the encryption configuration")
    node_keys = parse_encryption_config(on_node.stdout) if on_node.rc == 0 else None
    stored = stored_encryption_keys()
    keys = node_keys or stored or [new_encryption_key()]
    for key in keys:
        connections.mask(key["secret"])
    changes: list[str] = []
    if keys != stored:
        what = f"store the encryption key(s) {', '.join(k['name'] for k in keys)} as the Airflow connection {ENCRYPTION_CONN_ID}"
        if not ctx.dry_run:
            store_encryption_keys(keys, ctx.inv.cluster.name)
        changes.append(("would " if ctx.dry_run else "") + what)
    return keys, changes


def helm_env(inv: Inventory, r=None) -> dict[str, str]:
    """install-helm.sh's environment; with the control plane's remote ``r`` also the helm
    repository's key, fetched by the node and checked against its pin (versions.yaml)."""
    k = kubernetes_pins()
    env = {"HELM_PKG_VERSION": package_versions()["helm"], "HELM_APT_SOURCE": "", "HELM_APT_KEY": ""}
    if private_source(inv) is None:
        env["HELM_APT_SOURCE"] = f"deb [signed-by=/etc/apt/keyrings/datacloud-helm.gpg] {k['helm_apt_repository']}"
        if r is not None:
            env["HELM_APT_KEY"] = verified_key(r, k["helm_apt_key"], str(k["helm_apt_key_fingerprint"]), "helm repository's")
    return env


# --- the admin kubeconfig as an Airflow connection --------------------------------


def stored_kubeconfig(conn_id: str = config.KUBE_CONN_ID) -> str | None:
    conn = connections.get(conn_id)
    return None if conn is None else (conn["extra"] or {}).get("kube_config")


def store_kubeconfig(kubeconfig: str, cluster: str, conn_id: str = config.KUBE_CONN_ID) -> None:
    """Create or update the connection (kubernetes type, extra kube_config); see datacloud.connections."""
    connections.put(
        conn_id,
        "kubernetes",
        description=f"admin kubeconfig of cluster {cluster} (written by provision_platform)",
        extra={"kube_config": kubeconfig},
    )


# --- steps ----------------------------------------------------------------------------


def init(ctx: StageContext) -> dict:
    inv = ctx.inv
    cp = inv.control_plane
    changes: list[str] = []
    with ctx.remote(cp) as r:
        changes += r.script("install-helm.sh", env={**ctx.env, **helm_env(inv, r)}).changes
        keys, stored = encryption_keys(ctx, r)
        changes += stored
        changes += r.script(
            "encryption-config.sh", env={**ctx.env, "ENCRYPTION_CONFIG": ENCRYPTION_CONFIG}, stdin=encryption_config(keys)
        ).changes
        res = r.script(
            "kubeadm-init.sh",
            env={**ctx.env, "CLUSTER_NAME": inv.cluster.name, "K8S_VERSION": inv.cluster.kubernetes_version},
            stdin=kubeadm_config(inv),
        )
        changes += res.changes
        initialised = r.run(["test", "-f", ADMIN_KUBECONFIG], check=False).rc == 0
        if initialised and not ctx.dry_run:
            kubeconfig = r.run(["cat", ADMIN_KUBECONFIG], quiet=True, what="read the admin kubeconfig").stdout
            connections.mask(kubeconfig)
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
    connections.mask(token)
    join_config = render_text("kubernetes/kubeadm-join.yaml", inv=inv, endpoint=endpoint, token=token, ca_hash=ca_hash, node=node)
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


# --- rotating the encryption key -------------------------------------------------------
# An administrator asks for it on the kube-system Namespace:
#   kubectl annotate namespace kube-system datacloud/rotate-encryption-key=true
# The next run adds a new key first (the old one still decrypts), waits until the API server
# writes with it, rewrites every Secret, then drops the old key and the annotation. Each state
# is on the control plane's file, so an interrupted rotation is finished by the next run.

ROTATE_ANNOTATION = "datacloud/rotate-encryption-key"
PROBE_NAME = "datacloud-encryption-probe"
RELOAD_TIMEOUT_S = 240  # the API server re-reads a changed file within about a minute
ETCD_PKI = "/etc/kubernetes/pki/etcd"


def etcd_value_prefix(kube, cp: Node, key: str, size: int = 64) -> str:
    """The first bytes of a key's value in etcd, read with etcdctl in the control plane's etcd pod."""
    res = kube.kubectl(
        "exec", "--namespace", "kube-system", f"etcd-{cp.name}", "--", "etcdctl", "--endpoints=https://127.0.0.1:2379",
        f"--cacert={ETCD_PKI}/ca.crt", f"--cert={ETCD_PKI}/healthcheck-client.crt",
        f"--key={ETCD_PKI}/healthcheck-client.key", "get", key, "--print-value-only",
        quiet=True, check=False, timeout=60,
    )  # fmt: skip
    if res.rc != 0:
        raise TransientError(f"reading {key} from etcd on {cp.name} failed (exit {res.rc})")
    return res.stdout[:size]


def _write_keys(ctx: StageContext, r, keys: list[dict[str, str]]) -> list[str]:
    store_encryption_keys(keys, ctx.inv.cluster.name)  # stored first: a failure in between loses no key
    env = {**ctx.env, "ENCRYPTION_CONFIG": ENCRYPTION_CONFIG}
    return r.script("encryption-config.sh", env=env, stdin=encryption_config(keys)).changes


def _wait_encrypting_with(kube, cp: Node, name: str) -> None:
    """Until a freshly written probe Secret is stored under key ``name`` (the API server reloaded)."""
    want = f"k8s:enc:{ENCRYPTION_PROVIDER}:v1:{name}:"
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while True:
        kube.kubectl("delete", "secret", PROBE_NAME, "--namespace", "kube-system", "--ignore-not-found", quiet=True)
        kube.kubectl(
            "create", "secret", "generic", PROBE_NAME, "--namespace", "kube-system", "--from-literal=probe=1", quiet=True
        )
        if etcd_value_prefix(kube, cp, f"/registry/secrets/kube-system/{PROBE_NAME}").startswith(want):
            kube.kubectl("delete", "secret", PROBE_NAME, "--namespace", "kube-system", "--ignore-not-found", quiet=True)
            return
        if time.monotonic() > deadline:
            raise TransientError(f"the API server does not encrypt with {name} after {RELOAD_TIMEOUT_S} s; the run retries")
        time.sleep(5)


def encryption_key(ctx: StageContext) -> dict:
    """Rotate the encryption key when kube-system is annotated (or finish a rotation begun before)."""
    inv = ctx.inv
    cp = inv.control_plane
    with ctx.kube() as kube:
        r = kube.remote
        if r.run(["test", "-f", ADMIN_KUBECONFIG], check=False).rc != 0:
            return outcome("kubernetes", "encryption_key", [], ctx.dry_run)  # a dry run before init
        ns = kube.get_json("namespace", "kube-system") or {}
        asked = (ns.get("metadata", {}).get("annotations") or {}).get(ROTATE_ANNOTATION)
        undo = f"kubectl annotate namespace kube-system {ROTATE_ANNOTATION}-"
        if asked is not None and asked != "true":
            raise UserError(
                f"Namespace kube-system has annotation {ROTATE_ANNOTATION}={asked[:20]!r}; set it to true to rotate the "
                f"encryption key, or remove it with: {undo}"
            )
        on_node = r.run(["cat", ENCRYPTION_CONFIG], check=False, quiet=True, what="read the encryption configuration")
        keys = parse_encryption_config(on_node.stdout) if on_node.rc == 0 else None
        if keys is None:
            if asked:
                raise UserError(
                    f"{cp.name} has no encryption configuration ({ENCRYPTION_CONFIG}): the cluster was made without "
                    f"encryption at rest, so there is no key to rotate; remove the annotation with: {undo}"
                )
            return outcome("kubernetes", "encryption_key", [], ctx.dry_run)
        for key in keys:
            connections.mask(key["secret"])
        if not asked and len(keys) == 1:
            return outcome("kubernetes", "encryption_key", [], ctx.dry_run, key=keys[0]["name"])
        if ctx.dry_run:
            return outcome("kubernetes", "encryption_key", ["would rotate the encryption key of Secrets"], True)
        changes: list[str] = []
        if len(keys) == 1:
            keys = [new_encryption_key(), *keys]
            changes += _write_keys(ctx, r, keys)
            changes.append(f"add encryption key {keys[0]['name']} before {keys[1]['name']}")
        _wait_encrypting_with(kube, cp, keys[0]["name"])
        r.run(
            ["sh", "-c", 'kubectl --kubeconfig "$1" get secrets --all-namespaces -o json | kubectl --kubeconfig "$1" replace -f -',
             "sh", ADMIN_KUBECONFIG],
            quiet=True, what="rewrite every Secret", timeout=600,
        )  # fmt: skip
        changes.append(f"rewrite every Secret with encryption key {keys[0]['name']}")
        dropped = [k["name"] for k in keys[1:]]
        changes += _write_keys(ctx, r, keys[:1])
        changes.append(f"drop encryption key(s) {', '.join(dropped)}")
        if asked:
            kube.kubectl("annotate", "namespace", "kube-system", f"{ROTATE_ANNOTATION}-", quiet=True)
    return outcome("kubernetes", "encryption_key", changes, ctx.dry_run, key=keys[0]["name"])


STEPS = [
    Step("init", init),
    Step("join", join, nodes=worker_nodes),
    Step("encryption_key", encryption_key),
    Step("registered", registered),
]
