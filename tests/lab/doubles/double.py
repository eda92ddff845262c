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
* kubectl get/diff/apply (server-side)/wait/rollout status/delete/exec/
  get --raw/label/version, against a shared object store; nodes are Ready once
  a CNI is installed; like the API server it refuses objects whose namespace
  does not exist or whose CRD no chart has installed yet, and returns Secrets
  base64-encoded under ``data``;
* helm list/get values/upgrade --install/uninstall/version; a release creates
  the Deployments its chart creates (CHART_DEPLOYMENTS) and its CRDs;
* the controllers the stages wait for, reduced to what they report: the
  Percona operator (PerconaServerMongoDB ready; its mongos Service and pods at
  the addresses in ``addresses.json``, where the lab's mongos double listens),
  the spark-operator (SparkApplication COMPLETED) and the History Server's
  application list, claims Bound when their StorageClass exists and pods using
  them Succeeded, JupyterHub's hub (its admin bootstrap and REST answer),
  Prometheus' rules and targets APIs;
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
            'Get "https://10.0.0.1:6443/api/v1/namespaces/kube-public/configmaps/cluster-info": dial tcp: connect: connection refused'
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
                "[preflight] Running pre-flight checks\nerror execution phase preflight: [preflight] Some fatal errors occurred:\n"
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
                "[preflight] Running pre-flight checks\nerror execution phase preflight: [preflight] Some fatal errors occurred:\n"
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
                    f'error execution phase preflight: couldn\'t validate the identity of the API Server: token id "{tid}" is invalid'
                )
            if ca_hash != PKI_HASH:
                err(
                    "error execution phase preflight: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys match"
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


# Kinds the stages name on the command line (kubectl accepts singular, plural and short names).
ALIASES = {
    "no": "Node",
    "ns": "Namespace",
    "deploy": "Deployment",
    "ds": "DaemonSet",
    "sts": "StatefulSet",
    "po": "Pod",
    "pvc": "PersistentVolumeClaim",
    "svc": "Service",
    "cm": "ConfigMap",
    "sc": "StorageClass",
    "psmdb": "PerconaServerMongoDB",
    "sparkapp": "SparkApplication",
}
BUILTIN = (
    "Node", "Namespace", "Deployment", "DaemonSet", "StatefulSet", "Pod", "PersistentVolumeClaim", "Service",
    "ConfigMap", "Secret", "StorageClass", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
    "ClusterRoleBinding", "NetworkPolicy", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
)  # fmt: skip
# Custom kinds and the chart whose CRDs define them: like the API server, the
# double refuses such an object until a release of that chart is installed.
CRD_CHART = {
    "TigeraStatus": "tigera-operator",
    "Installation": "tigera-operator",
    "CephCluster": "rook-ceph",
    "CephBlockPool": "rook-ceph",
    "CephFilesystem": "rook-ceph",
    "PerconaServerMongoDB": "psmdb-operator-crds",
    "SparkApplication": "spark-operator",
    "ScheduledSparkApplication": "spark-operator",
    "ServiceMonitor": "kube-prometheus-stack",
    "PodMonitor": "kube-prometheus-stack",
    "PrometheusRule": "kube-prometheus-stack",
}
KINDS = {k.lower(): k for k in (*BUILTIN, *CRD_CHART)}
CLUSTER_SCOPED = {
    "Node", "Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}  # fmt: skip
BUILTIN_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}


def kind_of(word):
    w = word.split(".", 1)[0].lower()
    if w in ALIASES:
        return ALIASES[w]
    for cand in (w, w[:-1] if w.endswith("s") else w, w[:-2] if w.endswith("es") else w):
        if cand in KINDS:
            return KINDS[cand]
    return word


def _releases_of(chart, st):
    return [r for r in st["releases"].values() if r.get("chart_name", r["chart"].rsplit("-", 1)[0]) == chart]


def _addresses():
    """Where the lab's stand-ins for in-cluster servers listen (written by the lab)."""
    try:
        return json.load(open(os.path.join(STATE, "addresses.json")))
    except (OSError, ValueError):
        return {}


def _namespaces(st):
    names = set(BUILTIN_NAMESPACES) | set(st.get("helm_namespaces", []))
    names |= {o["metadata"]["name"] for o in st["objects"].values() if o.get("kind") == "Namespace"}
    return names


def _refuse(d, st):
    """The API server's answer to an object it cannot take, or None."""
    kind = d.get("kind", "")
    meta = d.get("metadata") or {}
    chart = CRD_CHART.get(kind)
    if chart and not _releases_of(chart, st):
        return (
            f'error: resource mapping not found for name: "{meta.get("name")}" namespace: "{meta.get("namespace", "")}" '
            f'from "STDIN": no matches for kind "{kind}" in version "{d.get("apiVersion")}"\n'
            "ensure CRDs are installed first"
        )
    ns = meta.get("namespace")
    if ns and kind not in CLUSTER_SCOPED and ns not in _namespaces(st):
        return f'Error from server (NotFound): namespaces "{ns}" not found'
    return None


def _psmdb_status(obj, st):
    ns = obj["metadata"].get("namespace", "")
    if not any(r["namespace"] == ns for r in _releases_of("psmdb-operator", st)):
        return {}  # no operator watches the namespace: nobody writes a status
    spec = obj.get("spec") or {}
    replsets = {
        rs["name"]: {"ready": rs.get("size", 3), "size": rs.get("size", 3), "status": "ready"} for rs in spec.get("replsets", [])
    }
    cfg = (spec.get("sharding") or {}).get("configsvrReplSet") or {}
    if cfg:
        replsets["cfg"] = {"ready": cfg.get("size", 3), "size": cfg.get("size", 3), "status": "ready"}
    size = ((spec.get("sharding") or {}).get("mongos") or {}).get("size", 2)
    return {"state": "ready", "replsets": replsets, "mongos": {"ready": size, "size": size, "status": "ready"}}


def _operator_made(k, ns, name, st):
    """Objects the Percona operator creates for a PerconaServerMongoDB: its mongos Service and member pods."""
    for obj in st["objects"].values():
        if obj.get("kind") != "PerconaServerMongoDB" or obj["metadata"].get("namespace") != ns:
            continue
        if not _psmdb_status(obj, st):
            continue
        cluster = obj["metadata"]["name"]
        addr = _addresses()
        if k == "Service" and name == f"{cluster}-mongos":
            return {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"type": "ClusterIP", "clusterIP": addr.get("mongos", "10.96.0.20"), "ports": [{"port": 27017}]},
            }
        members = [rs["name"] for rs in (obj.get("spec") or {}).get("replsets", [])] + ["cfg"]
        if k == "Pod" and any(re.fullmatch(rf"{re.escape(cluster)}-{m}-[0-9]+", name) for m in members):
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns},
                "status": {"phase": "Running", "podIP": addr.get("pods", "10.244.0.20")},
            }
    return None


def _spark_status(obj, st):
    ns = obj["metadata"].get("namespace", "")
    ops = [r for r in _releases_of("spark-operator", st) if ns in ((r["values"].get("spark") or {}).get("jobNamespaces") or [])]
    if not ops:
        return {}  # no operator watches the namespace: the application stays without a status
    name = obj["metadata"]["name"]
    app_id = "spark-" + hashlib.sha256(f"{ns}/{name}/{json.dumps(obj, sort_keys=True)}".encode()).hexdigest()[:32]
    conf = (obj.get("spec") or {}).get("sparkConf") or {}
    if conf.get("spark.eventLog.enabled") == "true":
        st.setdefault("spark_history", {})[app_id] = {"id": app_id, "name": name, "attempts": [{"completed": True}]}
    return {
        "applicationState": {"state": "COMPLETED"},
        "sparkApplicationId": app_id,
        "executorState": {f"{name}-exec-1": "COMPLETED"},
    }


def _claim_phase(claim, st):
    cls = (claim.get("spec") or {}).get("storageClassName")
    return "Bound" if cls and f"StorageClass//{cls}" in st["objects"] else "Pending"


def _with_status(obj, st):
    """A stored object as the API server returns it, with the status its controllers would write."""
    obj = json.loads(json.dumps(obj))
    k = obj.get("kind")
    ns = obj["metadata"].get("namespace", "")
    if k in ("Deployment", "StatefulSet"):
        replicas = obj.get("spec", {}).get("replicas", 1)
        ready = replicas if st.get("cni") else 0
        obj["status"] = {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready}
    elif k == "Secret":
        data = dict(obj.get("data") or {})
        data.update({key: base64.b64encode(v.encode()).decode() for key, v in (obj.pop("stringData", None) or {}).items()})
        obj["data"] = data
    elif k == "PersistentVolumeClaim":
        obj["status"] = {"phase": _claim_phase(obj, st)}
    elif k == "Pod":
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in obj.get("spec", {}).get("volumes", [])
            if "persistentVolumeClaim" in v
        ]
        bound = all(
            f"PersistentVolumeClaim/{ns}/{c}" in st["objects"]
            and _claim_phase(st["objects"][f"PersistentVolumeClaim/{ns}/{c}"], st) == "Bound"
            for c in claims
        )
        done = obj.get("spec", {}).get("restartPolicy") in ("Never", "OnFailure")
        obj["status"] = {"phase": ("Succeeded" if done else "Running") if bound and st.get("cni") else "Pending"}
    elif k == "PerconaServerMongoDB":
        obj["status"] = _psmdb_status(obj, st)
    elif k == "SparkApplication":
        obj["status"] = _spark_status(obj, st)
    elif k == "CephCluster":
        # the Rook operator (a rook-ceph release in the namespace) reports the cluster's health
        if any(r["namespace"] == ns for r in _releases_of("rook-ceph", st)):
            obj["status"] = {"phase": "Ready", "ceph": {"health": "HEALTH_OK", "details": {}}}
    return obj


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


def _get(kind, name, ns, st):
    k = kind_of(kind)
    if k == "Node":
        if name:
            return _node_obj(name, st) if name in st["nodes"] else None
        return {"apiVersion": "v1", "kind": "List", "items": [_node_obj(n, st) for n in sorted(st["nodes"])]}
    if name:
        obj = st["objects"].get(f"{k}/{ns or ''}/{name}") or st["objects"].get(f"{k}//{name}")
        if obj is None:
            return _operator_made(k, ns or "default", name, st)
        return _with_status(obj, st)
    items = [
        _with_status(o, st)
        for key, o in sorted(st["objects"].items())
        if key.startswith(f"{k}/{ns or ''}/") or (not ns and key.startswith(f"{k}/"))
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _jsonpath(obj, path):
    for part in path.strip("{}").strip(".").split("."):
        obj = (obj or {}).get(part) if isinstance(obj, dict) else None
    return obj


def _labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in ((selector or {}).get("matchLabels") or {}).items())


def _scrape_targets(st):
    """Prometheus' active targets: one per ServiceMonitor/PodMonitor whose selector matches something."""
    targets = []
    for obj in st["objects"].values():
        if obj.get("kind") not in ("ServiceMonitor", "PodMonitor"):
            continue
        spec = obj.get("spec") or {}
        names = (spec.get("namespaceSelector") or {}).get("matchNames") or [obj["metadata"]["namespace"]]
        matched = False
        for other in st["objects"].values():
            if other["metadata"].get("namespace") not in names:
                continue
            if obj["kind"] == "ServiceMonitor" and other.get("kind") == "Service":
                matched |= _labels_match(spec.get("selector"), other["metadata"].get("labels") or {})
            if obj["kind"] == "PodMonitor" and other.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
                pod_labels = (((other.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
                matched |= _labels_match(spec.get("selector"), pod_labels)
        if matched:
            kind = obj["kind"][0].lower() + obj["kind"][1:]
            pool = f"{kind}/{obj['metadata']['namespace']}/{obj['metadata']['name']}/0"
            targets.append({"scrapePool": pool, "health": "up" if st.get("cni") else "down"})
    return targets


def _exec(argv, stdin, ns, st):
    """kubectl exec into the few pods the stages talk to (what those pods would answer)."""
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    head = argv[: argv.index("--")] if "--" in argv else argv
    target = positional(head, ("--kubeconfig", "-n", "--namespace", "-c", "--container"))[1:]
    target = target[0] if target else ""
    kind, _, name = target.rpartition("/")
    kind = kind_of(kind or "pod")
    if kind == "Deployment":
        dep = _get("deployment", name, ns, st)
        if dep is None or not dep["status"]["readyReplicas"]:
            err(f'Error from server (NotFound): deployments.apps "{name}" not found')
    elif not any(
        re.fullmatch(rf"{re.escape(d['metadata']['name'])}-[0-9]+", name)
        for d in st["objects"].values()
        if d.get("kind") == "StatefulSet" and d["metadata"].get("namespace") == ns
    ):
        err(f'Error from server (NotFound): pods "{name}" not found')
    script = command[command.index("-c") + 1] if command[:1] == ["python3"] and "-c" in command else ""
    if (ns, name) == ("jupyter", "hub") and stdin.strip():
        # manifests/jupyter/bootstrap_admin.py: create the admin's NativeAuthenticator account once
        spec = json.loads(stdin)
        digest = hashlib.sha256(spec["password"].encode()).hexdigest()
        accounts = st.setdefault("hub_accounts", {})
        have = accounts.get(spec["username"])
        if have is None:
            accounts[spec["username"]] = digest
            out("created")
        else:
            out("exists" if have == digest else "exists-other-password")
        return
    if (ns, name) == ("jupyter", "hub") and "/hub/api/" in script:
        out(json.dumps({"version": "5.4.3"}))
        return
    if command[:2] == ["wget", "-qO-"] and "prometheus" in name:
        url = command[2]
        if "/api/v1/rules" in url:
            groups = [
                {
                    "name": g["name"],
                    "rules": [{"name": r["alert"], "type": "alerting"} for r in g.get("rules", []) if "alert" in r],
                }
                for o in st["objects"].values()
                if o.get("kind") == "PrometheusRule"
                for g in (o.get("spec") or {}).get("groups", [])
            ]
            out(json.dumps({"status": "success", "data": {"groups": groups}}))
            return
        if "/api/v1/targets" in url:
            out(json.dumps({"status": "success", "data": {"activeTargets": _scrape_targets(st)}}))
            return
    err(f"the kubectl double does not support exec of {' '.join(command[:2])} in {ns}/{target}", 2)


def _raw(path, st):
    """GET through the API server: the service proxy to the Spark History Server's REST API."""
    m = re.fullmatch(r"/api/v1/namespaces/([a-z0-9-]+)/services/(?:http:)?([a-z0-9-]+):([0-9]+)/proxy(/.*)", path)
    if not m:
        err(f"the kubectl double does not support get --raw {path}", 2)
    ns, svc, _port, rest = m.groups()
    service = st["objects"].get(f"Service/{ns}/{svc}")
    dep = _get("deployment", svc, ns, st)
    if service is None:
        err(f'Error from server (NotFound): services "{svc}" not found')
    if dep is None or not dep["status"]["readyReplicas"]:
        err("Error from server (ServiceUnavailable): the server is currently unable to handle the request")
    if rest.startswith("/api/v1/applications"):
        out(json.dumps(list(st.get("spark_history", {}).values())))
        return
    err(f'Error from server (NotFound): the server could not find the requested resource ("{rest}")')


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
            "--raw",
            "-c",
            "--container",
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
    if sub == "get" and flag(argv, "--raw"):
        with Locked() as st:
            _raw(flag(argv, "--raw"), st)
        return
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
                refused = _refuse(d, st)
                if refused:
                    err(refused, 2 if sub == "diff" else 1)  # kubectl diff: 1 means "differs", >1 an error
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
            if kind_of(kind) == "Node":
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
        if cond.startswith("jsonpath="):
            path, _, want = cond[len("jsonpath=") :].partition("=")
            if str(_jsonpath(obj, path)) != want:
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
        if not obj.get("status", {}).get("readyReplicas", 1):
            err(f"error: timed out waiting for the condition on {kind}/{name}")
        out(f'{kind} "{name}" successfully rolled out')
        return
    if sub == "delete":
        kinds = [kind_of(k) for k in (pos[1] if len(pos) > 1 else "").split(",")]
        name = pos[2] if len(pos) > 2 else ""
        gone = []
        with Locked() as st:
            for k in kinds:
                key = f"{k}/{'' if k in CLUSTER_SCOPED else (ns or 'default')}/{name}"
                if st["objects"].pop(key, None) is not None:
                    gone.append(f'{k.lower()} "{name}" deleted')
                elif "--ignore-not-found" not in argv:
                    err(f'Error from server (NotFound): {k.lower()} "{name}" not found')
        for line in gone:
            out(line)
        return
    if sub == "exec":
        with Locked() as st:
            _exec(argv, stdin, ns or "default", st)
        return
    if sub in ("label", "taint", "annotate", "cordon", "drain"):
        out(f"{' '.join(pos[1:3])} {sub}ed")
        return
    err(f"the kubectl double does not support: {' '.join(argv)}", 2)


# ---------------------------------------------------------------- helm

# The workloads each chart creates that the stages wait for or talk to (kind,
# name, pod labels), with the values datacloud sets (see the stage modules).
CHART_WORKLOADS = {
    "rook-ceph": [("Deployment", "rook-ceph-operator", {"app": "rook-ceph-operator"})],
    "psmdb-operator": [("Deployment", "psmdb-operator", {"app.kubernetes.io/name": "psmdb-operator"})],
    "spark-operator": [
        (
            "Deployment",
            "spark-operator-controller",
            {
                "app.kubernetes.io/name": "spark-operator",
                "app.kubernetes.io/instance": "spark-operator",
                "app.kubernetes.io/component": "controller",
            },
        ),
        (
            "Deployment",
            "spark-operator-webhook",
            {
                "app.kubernetes.io/name": "spark-operator",
                "app.kubernetes.io/instance": "spark-operator",
                "app.kubernetes.io/component": "webhook",
            },
        ),
    ],
    "jupyterhub": [("Deployment", "hub", {"component": "hub"}), ("Deployment", "proxy", {"component": "proxy"})],
    "kube-prometheus-stack": [
        ("Deployment", "kube-prometheus-stack-operator", {"app": "kube-prometheus-stack-operator"}),
        ("StatefulSet", "prometheus-kube-prometheus-stack-prometheus", {"app.kubernetes.io/name": "prometheus"}),
        ("Deployment", "kube-prometheus-stack-grafana", {"app.kubernetes.io/name": "grafana"}),
    ],
    "headlamp": [("Deployment", "headlamp", {"app.kubernetes.io/name": "headlamp"})],
}


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
        chart_name = chart.rsplit("/", 1)[-1]
        with Locked() as st:
            if ns not in _namespaces(st):
                if "--create-namespace" not in argv:
                    err(f'Error: create: failed to create: namespaces "{ns}" not found')
                st.setdefault("helm_namespaces", []).append(ns)
            old = st["releases"].get(f"{ns}/{name}")
            st["releases"][f"{ns}/{name}"] = {
                "name": name,
                "namespace": ns,
                "chart": f"{chart_name}-{version}",
                "chart_name": chart_name,
                "repo": flag(argv, "--repo"),
                "status": "deployed",
                "values": values,
                "revision": (old["revision"] + 1) if old else 1,
            }
            for kind, wname, labels in CHART_WORKLOADS.get(chart_name, []):
                st["objects"][f"{kind}/{ns}/{wname}"] = {
                    "apiVersion": "apps/v1",
                    "kind": kind,
                    "metadata": {"name": wname, "namespace": ns, "annotations": {"meta.helm.sh/release-name": name}},
                    "spec": {"replicas": 1, "template": {"metadata": {"labels": labels}}},
                }
            if chart_name in ("tigera-operator", "cilium"):
                st["cni"] = chart_name
                st["objects"]["TigeraStatus//calico"] = {"kind": "TigeraStatus", "metadata": {"name": "calico"}}
        out(f'Release "{name}" has been {"upgraded" if old else "installed"}. Happy Helming!')
        return
    if sub == "uninstall":
        with Locked() as st:
            st["releases"].pop(f"{ns}/{pos[1]}", None)
            for key in [
                k
                for k, o in st["objects"].items()
                if (o["metadata"].get("annotations") or {}).get("meta.helm.sh/release-name") == pos[1]
                and o["metadata"].get("namespace") == ns
            ]:
                del st["objects"][key]
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
        if "-" in argv or ((argv[:1] == ["exec"] or "exec" in argv[:3]) and ("-i" in argv or "--stdin" in argv)):
            stdin = sys.stdin.read()
    record(tool, argv, stdin)
    {"kubeadm": kubeadm, "kubectl": kubectl, "helm": helm, "kubelet": kubelet}.get(
        tool, lambda a, s: err(f"unknown double {tool}", 2)
    )(argv, stdin)


if __name__ == "__main__":
    main()
