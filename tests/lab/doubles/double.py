#!/usr/bin/python3
"""Recording DOUBLES of kubeadm, kubectl, kubelet and helm for the datacloud SSH lab.

Kubernetes cannot run on the lab machine, so lab nodes get these instead of the
real tools (packaged as kubeadm/kubectl/kubelet/helm .debs at the pinned versions
and installed by node_prep through apt, like the real ones). Every call is
appended to /var/lib/double-cluster/calls.jsonl (node, tool, argv, stdin) and
answered like the real tool for the cases datacloud uses:

* kubeadm init (first time; "already initialised" when the manifests exist),
  token create --print-join-command, join (first time; "already joined" when
  kubelet.conf exists; bad/expired token), reset, version;
* kubectl get/diff/apply (server-side)/wait/rollout status/label/version,
  against a shared object store; nodes are Ready once a CNI is installed;
* helm list/get values/upgrade --install/uninstall/version;
* a transient failure: /var/lib/double-cluster/faults/<tool>-<subcommand>-<node>
  holds a count of calls that fail like a connection refused.

/var/lib/double-cluster is shared by the nodes of one lab (the stand-in for
the API server). This file is test infrastructure; nothing in the product
knows about it.
"""

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import time

STATE = "/var/lib/double-cluster"
VERSIONS = {"kubeadm": "v1.34.2", "kubectl": "v1.34.2", "kubelet": "v1.34.2", "helm": "v3.19.2"}
PKI_HASH = "sha256:" + hashlib.sha256(b"datacloud-lab-ca").hexdigest()


def node():
    return socket.gethostname()


class Locked:
    def __enter__(self):
        os.makedirs(STATE, exist_ok=True)
        self.f = open(os.path.join(STATE, ".lock"), "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        path = os.path.join(STATE, "cluster.json")
        self.state = json.load(open(path)) if os.path.exists(path) else {}
        self.state.setdefault("nodes", {})
        self.state.setdefault("objects", {})
        self.state.setdefault("releases", {})
        self.state.setdefault("tokens", {})
        return self.state

    def __exit__(self, *exc):
        path = os.path.join(STATE, "cluster.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
        self.f.close()


def record(tool, argv, stdin):
    entry = {"time": time.time(), "node": node(), "tool": tool, "argv": argv, "stdin": stdin, "uid": os.getuid()}
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, "calls.jsonl"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(entry) + "\n")


def fault(tool, sub):
    path = os.path.join(STATE, "faults", f"{tool}-{sub}-{node()}")
    try:
        left = int(open(path).read().strip() or "0")
    except (OSError, ValueError):
        return False
    if left <= 0:
        return False
    with open(path, "w") as f:
        f.write(str(left - 1))
    return True


def out(text=""):
    sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))


def err(text, rc=1):
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.exit(rc)


def flag(argv, name, default=None):
    """--name value or --name=value (removes nothing)."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def positional(argv, with_values=()):
    """Arguments that are neither flags nor values of the given flags."""
    res, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            if a in with_values:
                skip = True
            continue
        res.append(a)
    return res


# ---------------------------------------------------------------- kubeadm


def kubeadm(argv, stdin):
    pos = positional(
        argv,
        (
            "--config",
            "--ttl",
            "--token",
            "--discovery-token-ca-cert-hash",
            "--node-name",
            "-o",
            "--output",
            "--kubeconfig",
            "--cri-socket",
        ),
    )
    sub = pos[0] if pos else ""
    if sub == "version":
        out(
            VERSIONS["kubeadm"]
            if flag(argv, "-o") == "short"
            else f'kubeadm version: &version.Info{{GitVersion:"{VERSIONS["kubeadm"]}"}}'
        )
        return
    if fault("kubeadm", sub):
        err(
            "error execution phase preflight: couldn't validate the identity of the API Server: "
            'Get "https://10.0.0.1:6443/api/v1/namespaces/kube-public/configmaps/cluster-info": dial tcp: connect: connection refused'  # noqa: E501 - the real message
        )
    if sub == "init":
        config = flag(argv, "--config")
        if not config or not os.path.exists(config):
            err(f"open {config}: no such file or directory")
        text = open(config).read()
        for kind in ("kind: InitConfiguration", "kind: ClusterConfiguration"):
            if kind not in text:
                err(f"the config file {config} has no {kind}")
        if os.path.exists("/etc/kubernetes/manifests/kube-apiserver.yaml"):
            err(
                "[preflight] Running pre-flight checks\nerror execution phase preflight: [preflight] Some fatal errors occurred:\n"  # noqa: E501 - the real message
                "\t[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]: "
                "/etc/kubernetes/manifests/kube-apiserver.yaml already exists\n"
                "[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`"
            )
        os.makedirs("/etc/kubernetes/manifests", exist_ok=True)
        os.makedirs("/etc/kubernetes/pki", exist_ok=True)
        for m in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"):
            with open(f"/etc/kubernetes/manifests/{m}.yaml", "w") as f:
                f.write(f"# {m} static pod (written by the kubeadm double)\n")
        key = base64.b64encode(secrets.token_bytes(48)).decode()
        admin = (
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: "
            f"{base64.b64encode(b'lab-ca').decode()}\n    server: https://{node()}:6443\n  name: kubernetes\n"
            "contexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\n"
            "current-context: kubernetes-admin@kubernetes\nusers:\n- name: kubernetes-admin\n  user:\n"
            f"    client-certificate-data: {base64.b64encode(b'lab-cert').decode()}\n    client-key-data: {key}\n"
        )
        old = os.umask(0o077)  # kubeconfigs hold the admin key
        for name in ("admin.conf", "super-admin.conf", "kubelet.conf"):
            with open(f"/etc/kubernetes/{name}", "w") as f:
                f.write(admin)
        os.umask(old)
        with Locked() as st:
            st["initialized"] = True
            st["control_plane"] = node()
            st["config"] = text
            m = re.search(r'controlPlaneEndpoint: "?([0-9A-Za-z.:-]+)"?', text)
            st["endpoint"] = m.group(1) if m else f"{node()}:6443"
            m = re.search(r'nodeRegistration:\n  name: "?([a-z0-9-]+)"?', text)
            st["nodes"][m.group(1) if m else node()] = {"role": "control-plane", "joined": time.time()}
            st["objects"]["Deployment/kube-system/coredns"] = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "spec": {"replicas": 2},
            }
        out("[init] Using Kubernetes version: " + VERSIONS["kubeadm"])
        out("Your Kubernetes control-plane has initialized successfully!")
        return
    if sub == "token":
        action = pos[1] if len(pos) > 1 else ""
        if action != "create":
            err(f"the kubeadm double does not support token {action}", 2)
        if not os.path.exists("/etc/kubernetes/admin.conf"):
            err("failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory")
        ttl = flag(argv, "--ttl", "24h0m0s")
        seconds = _duration(ttl)
        token = f"{secrets.token_hex(3)}.{secrets.token_hex(8)}"
        with Locked() as st:
            st["tokens"][token.split(".")[0]] = {"secret": token.split(".")[1], "expires": time.time() + seconds, "ttl": ttl}
            endpoint = st.get("endpoint", f"{node()}:6443")
        if "--print-join-command" in argv:
            out(f"kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {PKI_HASH} ")
        else:
            out(token)
        return
    if sub == "join":
        if os.path.exists("/etc/kubernetes/kubelet.conf"):
            err(
                "[preflight] Running pre-flight checks\nerror execution phase preflight: [preflight] Some fatal errors occurred:\n"  # noqa: E501 - the real message
                "\t[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists"
            )
        token = flag(argv, "--token", "")
        ca_hash = flag(argv, "--discovery-token-ca-cert-hash")
        name = flag(argv, "--node-name") or node()
        config = flag(argv, "--config")
        if config:
            if not os.path.exists(config):
                err(f"open {config}: no such file or directory")
            text = open(config).read()
            if "kind: JoinConfiguration" not in text:
                err(f"the config file {config} has no kind: JoinConfiguration")
            m = re.search(r'token: "?([a-z0-9]{6}\.[a-z0-9]{16})"?', text)
            token = m.group(1) if m else ""
            m = re.search(r"(sha256:[0-9a-f]{64})", text)
            ca_hash = m.group(1) if m else None
            m = re.search(r'nodeRegistration:\n  name: "?([a-z0-9-]+)"?', text)
            name = m.group(1) if m else name
        tid, _, secret = token.partition(".")
        with Locked() as st:
            known = st["tokens"].get(tid)
            if not known or known["secret"] != secret or known["expires"] < time.time():
                err(
                    f'error execution phase preflight: couldn\'t validate the identity of the API Server: token id "{tid}" is invalid'  # noqa: E501 - the real message
                )
            if ca_hash != PKI_HASH:
                err(
                    "error execution phase preflight: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys match"  # noqa: E501 - the real message
                )
            st["nodes"][name] = {"role": "worker", "joined": time.time()}
        os.makedirs("/etc/kubernetes/pki", exist_ok=True)
        with open("/etc/kubernetes/kubelet.conf", "w") as f:
            f.write("# kubelet kubeconfig (written by the kubeadm double)\n")
        out("This node has joined the cluster:")
        return
    if sub == "reset":
        for path in ("/etc/kubernetes/admin.conf", "/etc/kubernetes/super-admin.conf", "/etc/kubernetes/kubelet.conf"):
            if os.path.exists(path):
                os.remove(path)
        for m in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"):
            p = f"/etc/kubernetes/manifests/{m}.yaml"
            if os.path.exists(p):
                os.remove(p)
        with Locked() as st:
            st["nodes"].pop(node(), None)
            if st.get("control_plane") == node():
                st.clear()
        out("[reset] Deleted contents of the etcd data directory: /var/lib/etcd")
        return
    err(f"the kubeadm double does not support: {' '.join(argv)}", 2)


def _duration(text):
    total, num = 0, ""
    for ch in text:
        if ch.isdigit():
            num += ch
        else:
            total += int(num or 0) * {"h": 3600, "m": 60, "s": 1}.get(ch, 0)
            num = ""
    return total or int(num or 0)


# ---------------------------------------------------------------- kubectl


def _need_kubeconfig(argv):
    cfg = flag(argv, "--kubeconfig") or os.environ.get("KUBECONFIG")
    if not cfg or not os.path.exists(cfg):
        err("The connection to the server localhost:8080 was refused - did you specify the right host or port?")
    with Locked() as st:
        if not st.get("initialized"):
            err("The connection to the server was refused - did you specify the right host or port?")


def _key(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace", "")
    return f"{obj.get('kind')}/{ns}/{meta.get('name')}"


def _node_obj(name, st):
    ready = "True" if st.get("cni") else "False"
    reason = "KubeletReady" if ready == "True" else "KubeletNotReady"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "conditions": [{"type": "Ready", "status": ready, "reason": reason}],
            "nodeInfo": {"kubeletVersion": VERSIONS["kubelet"]},
        },
    }


KINDS = {
    "node": "Node",
    "nodes": "Node",
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "daemonset": "DaemonSet",
    "daemonsets": "DaemonSet",
    "ds": "DaemonSet",
    "namespace": "Namespace",
    "namespaces": "Namespace",
    "ns": "Namespace",
    "tigerastatus": "TigeraStatus",
    "configmap": "ConfigMap",
    "secret": "Secret",
    "statefulset": "StatefulSet",
}


def _get(kind, name, ns, st):
    k = KINDS.get(kind.lower(), kind)
    if k == "Node":
        if name:
            return _node_obj(name, st) if name in st["nodes"] else None
        return {"apiVersion": "v1", "kind": "List", "items": [_node_obj(n, st) for n in sorted(st["nodes"])]}
    if name:
        obj = st["objects"].get(f"{k}/{ns or ''}/{name}") or st["objects"].get(f"{k}//{name}")
        if obj is None:
            return None
        obj = json.loads(json.dumps(obj))
        if k == "Deployment":
            ready = obj.get("spec", {}).get("replicas", 1) if st.get("cni") else 0
            obj["status"] = {
                "replicas": obj.get("spec", {}).get("replicas", 1),
                "readyReplicas": ready,
                "availableReplicas": ready,
            }
        return obj
    items = [
        o
        for key, o in sorted(st["objects"].items())
        if key.startswith(f"{k}/{ns or ''}/") or (not ns and key.startswith(f"{k}/"))
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def kubectl(argv, stdin):
    pos = positional(
        argv,
        (
            "--kubeconfig",
            "-n",
            "--namespace",
            "-o",
            "--output",
            "-f",
            "--filename",
            "--field-manager",
            "--selector",
            "-l",
            "--for",
            "--timeout",
        ),
    )
    sub = pos[0] if pos else ""
    if sub == "version":
        out(f"Client Version: {VERSIONS['kubectl']}")
        return
    _need_kubeconfig(argv)
    if fault("kubectl", sub):
        err("Unable to connect to the server: dial tcp 10.0.0.1:6443: connect: connection refused")
    ns = flag(argv, "-n") or flag(argv, "--namespace")
    if sub == "get":
        kind = pos[1] if len(pos) > 1 else ""
        name = pos[2] if len(pos) > 2 else None
        if "/" in kind:
            kind, name = kind.split("/", 1)
        with Locked() as st:
            obj = _get(kind, name, ns, st)
        if obj is None:
            err(f'Error from server (NotFound): {kind} "{name}" not found')
        out(json.dumps(obj, indent=2))
        return
    if sub in ("diff", "apply"):
        if "--server-side" not in argv or flag(argv, "-f") != "-":
            err(f"the kubectl double supports only {sub} --server-side -f -", 2)
        obj = json.loads(stdin)
        docs = obj.get("items", [obj]) if obj.get("kind") == "List" else [obj]
        changed = False
        with Locked() as st:
            for d in docs:
                key = _key(d)
                if st["objects"].get(key) != d:
                    changed = True
                    if sub == "diff":
                        out(f"diff -u -N /tmp/LIVE/{key} /tmp/MERGED/{key}")
                    else:
                        st["objects"][key] = d
                        if d.get("kind") == "Installation":
                            st["objects"]["TigeraStatus//calico"] = {"kind": "TigeraStatus", "metadata": {"name": "calico"}}
                if sub == "apply":
                    group = d.get("apiVersion", "v1").split("/")[0] if "/" in d.get("apiVersion", "") else ""
                    out(f"{d.get('kind', '').lower()}{'.' + group if group else ''}/{d['metadata']['name']} serverside-applied")
        if sub == "diff" and changed:
            sys.exit(1)
        return
    if sub == "wait":
        cond = flag(argv, "--for", "")
        kind = pos[1] if len(pos) > 1 else ""
        name = pos[2] if len(pos) > 2 else None
        if "/" in kind:
            kind, name = kind.split("/", 1)
        with Locked() as st:
            if KINDS.get(kind.lower(), kind) == "Node":
                names = sorted(st["nodes"]) if ("--all" in argv or not name) else [name]
                for n in names:
                    if n not in st["nodes"]:
                        err(f'Error from server (NotFound): nodes "{n}" not found')
                    if not st.get("cni"):
                        err(f"error: timed out waiting for the condition on nodes/{n}")
                for n in names:
                    out(f"node/{n} condition met")
                return
            obj = _get(kind, name, ns, st) if name else _get(kind, None, ns, st)
        if obj is None or (not name and not obj["items"]):
            err(f'Error from server (NotFound): {kind} "{name}" not found')
        if cond.startswith("condition=Available") and obj.get("status", {}).get("availableReplicas", 1) == 0:
            err(f"error: timed out waiting for the condition on {kind}/{name}")
        out(f"{kind}/{name or 'all'} condition met")
        return
    if sub == "rollout":
        target = pos[2] if len(pos) > 2 else ""
        kind, _, name = target.partition("/")
        with Locked() as st:
            obj = _get(kind, name, ns, st)
        if obj is None:
            err(f'Error from server (NotFound): {kind} "{name}" not found')
        out(f'{kind} "{name}" successfully rolled out')
        return
    if sub in ("label", "taint", "annotate", "cordon", "drain", "delete"):
        out(f"{' '.join(pos[1:3])} {sub}ed")
        return
    err(f"the kubectl double does not support: {' '.join(argv)}", 2)


# ---------------------------------------------------------------- helm


def helm(argv, stdin):
    pos = positional(
        argv,
        ("--kubeconfig", "-n", "--namespace", "-o", "--output", "--filter", "--repo", "--version", "--values", "-f", "--timeout"),
    )
    sub = pos[0] if pos else ""
    if sub == "version":
        out(f"{VERSIONS['helm']}+g0000000")
        return
    _need_kubeconfig(argv)
    if fault("helm", sub):
        err('Error: Kubernetes cluster unreachable: Get "https://10.0.0.1:6443/version": dial tcp: connect: connection refused')
    ns = flag(argv, "-n") or flag(argv, "--namespace") or "default"
    if sub == "list":
        filt = (flag(argv, "--filter") or "").strip("^$")
        with Locked() as st:
            rows = [
                {
                    "name": r["name"],
                    "namespace": r["namespace"],
                    "revision": str(r["revision"]),
                    "status": r["status"],
                    "chart": r["chart"],
                    "app_version": "",
                }
                for key, r in sorted(st["releases"].items())
                if r["namespace"] == ns and (not filt or r["name"] == filt)
            ]
        out(json.dumps(rows))
        return
    if sub == "get" and len(pos) > 2 and pos[1] == "values":
        with Locked() as st:
            r = st["releases"].get(f"{ns}/{pos[2]}")
        if r is None:
            err("Error: release: not found")
        out(json.dumps(r["values"]))
        return
    if sub == "upgrade":
        if "--install" not in argv:
            err("the helm double supports only upgrade --install", 2)
        name, chart = pos[1], pos[2]
        version = flag(argv, "--version")
        if not version:
            err("the helm double requires a pinned --version", 2)
        values = json.loads(stdin) if flag(argv, "--values") == "-" and stdin.strip() else {}
        with Locked() as st:
            old = st["releases"].get(f"{ns}/{name}")
            st["releases"][f"{ns}/{name}"] = {
                "name": name,
                "namespace": ns,
                "chart": f"{chart.rsplit('/', 1)[-1]}-{version}",
                "repo": flag(argv, "--repo"),
                "status": "deployed",
                "values": values,
                "revision": (old["revision"] + 1) if old else 1,
            }
            if chart.rsplit("/", 1)[-1] in ("tigera-operator", "cilium"):
                st["cni"] = chart.rsplit("/", 1)[-1]
                st["objects"]["TigeraStatus//calico"] = {"kind": "TigeraStatus", "metadata": {"name": "calico"}}
        out(f'Release "{name}" has been {"upgraded" if old else "installed"}. Happy Helming!')
        return
    if sub == "uninstall":
        with Locked() as st:
            st["releases"].pop(f"{ns}/{pos[1]}", None)
        out(f'release "{pos[1]}" uninstalled')
        return
    err(f"the helm double does not support: {' '.join(argv)}", 2)


def kubelet(argv, stdin):
    if "--version" in argv:
        out(f"Kubernetes {VERSIONS['kubelet']}")
        return
    err("the kubelet double does not run a kubelet", 2)


def main():
    os.umask(0o000 if os.path.isdir(STATE) else 0o022)  # the shared state is written by root and by users
    tool = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    stdin = ""
    if tool in ("kubectl", "helm") and not sys.stdin.isatty():
        if "-" in argv:
            stdin = sys.stdin.read()
    record(tool, argv, stdin)
    {"kubeadm": kubeadm, "kubectl": kubectl, "helm": helm, "kubelet": kubelet}.get(
        tool, lambda a, s: err(f"unknown double {tool}", 2)
    )(argv, stdin)


if __name__ == "__main__":
    main()
