"""provision_platform and platform_teardown for real on a 3-node SSH lab running real Kubernetes.

The DAGs run with ``dag.test()`` in a child process (tests/lab/run_dag.py) with
their own AIRFLOW_HOME. The nodes are real sshd's in network namespaces with
overlay root filesystems (tests/lab/lab.py); node_prep installs containerd and
runc from Debian and kubelet/kubeadm/kubectl from the lab's apt repository
(.debs of the binaries ./dev setup built); ``kubeadm init``/``join`` pull the
control-plane images from the lab's registry mirror; the network stage runs
flannel. Every check of the cluster below reads the real API server.

Tests in this module run in order on one lab: dry run → first run → pods and
Services across nodes → second run → failures → teardown → a new run joins again.
What is still stood in is :data:`STAND_INS` (printed at the end of the session).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.lab.lab import Lab

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the SSH lab needs root (network namespaces, mounts)")

STAGES = ["preflight", "gateway", "node_prep", "kubernetes", "network", "storage", "mongo", "spark", "verify"]

# What this lab still stands in for, and why (tests/lab/conftest.py prints it).
STAND_INS = {
    "systemd on the nodes": "tests/lab/node-systemctl.py runs the units node_prep enables (containerd, kubelet); "
    "a node is a network namespace, not a machine with an init",
    "the machines": "network namespaces + overlay root filesystems sharing this VM's kernel and cgroup hierarchies",
    "the upstream registries and repositories": "the lab mirror on its bridge: Debian's docker-registry with images "
    "assembled from the binaries built here, an apt repository with .debs of them, ../shared/charts over HTTP",
    "the Kubeflow Spark operator": "its image (ghcr.io/kubeflow/spark-operator/controller) is the lab's Spark image + "
    "tests/lab/spark_operator_double.py: the chart is real; the controller double submits SparkApplications with the "
    "real spark-submit and writes their status, the webhook double admits everything (its Go module is not served)",
    "the Percona operator and mongod/mongos": "one image under both names (percona/percona-server-mongodb-operator, "
    "the cluster object's spec.image): tests/lab/psmdb_operator_double.py makes the operator's StatefulSets, "
    "Services, claims, users and status through the real API; tests/lab/mongo_double.py answers as members and "
    "routers (SCRAM, roles, listShards, sharding metadata, replica-set status) in front of one real FerretDB in the "
    "first shard's first member, which holds all data (neither image can be built here)",
    "NetworkPolicy enforcement": "not run: this VM's kernel has no nft queue support (CONFIG_NFT_QUEUE), which "
    "kube-network-policies needs; the lab runs flannel without the policy agent",
}

# Files an SSH login itself writes (sshd's login records, sudo's timestamps), and what the
# node's services write as they run (logs, /run, the CNI plugins' per-pod state, and the
# runtime state of the pods a run starts and deletes: the storage stage's probe and the
# local-path helper pods it makes; kubectl's discovery and HTTP cache on the control plane), the
# event logs the spark stage's verification run leaves in the History Server's claim (its history),
# and the database files on the mongo members' claims (FerretDB writes them as it runs).
VOLATILE = re.compile(
    r"^(var/log/|var/lib/sudo/|home/datacloud/\.cache/|root/\.cache/|var/cache/debconf/.*-old$|run/|var/lib/cni/"
    r"|var/lib/containerd/|var/lib/kubelet/pods/|root/\.kube/cache/"
    r"|var/lib/datacloud/local-path/pvc-[0-9a-f-]+_spark-jobs_spark-events/apps/"
    r"|var/lib/datacloud/local-path/pvc-[0-9a-f-]+_mongo_mongod-data-)"
)


@pytest.fixture(scope="module")
def workdir():
    """Own folder (pytest's numbered temp folders may be pruned by concurrent sessions)."""
    path = Path(tempfile.mkdtemp(prefix="datacloud-lab-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(workdir: Path):
    lab = Lab(3, workdir / "lab")
    lab.up()
    print(f"\nlab up: 3 nodes in {lab.elapsed:.1f}s")
    yield lab
    lab.down()
    assert lab.leftovers() == []


@pytest.fixture(scope="module")
def env(lab: Lab, workdir: Path) -> dict[str, str]:
    return airflow_env(lab, workdir)


def airflow_env(lab: Lab, workdir: Path) -> dict[str, str]:
    """An own AIRFLOW_HOME (migrated metadata DB, the per-node pool) for dag.test() runs against LAB."""
    home = workdir / "airflow"
    home.mkdir()
    dags = home / "dags"  # only the DAGs under test: dag.test() parses the whole folder
    dags.mkdir()
    for name in ("provision_platform.py", "platform_teardown.py", "etl_flights_daily.py"):
        (dags / name).symlink_to(ROOT / "dags" / name)
    e = {
        **os.environ,
        **lab.env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'include'}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    e.pop("AIRFLOW_CONN_DATACLOUD_KUBE", None)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=e, check=True, capture_output=True)
    # the administrator's one-time setup step (./dev up does it through the REST API)
    subprocess.run(
        [airflow, "pools", "set", "datacloud_nodes", "10", "datacloud per-node tasks"], env=e, check=True, capture_output=True
    )
    return e


def run_dag(
    env: dict[str, str], dag_id: str, conf: dict, timeout: float = 900, logical_date: str | None = None
) -> tuple[dict, str]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_dag.py"), dag_id, json.dumps(conf), *([logical_date] if logical_date else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    # DATACLOUD_LAB_LOG_DIR keeps the run logs after the test (the work folder is removed)
    logs = Path(os.environ.get("DATACLOUD_LAB_LOG_DIR") or Path(env["AIRFLOW_HOME"]) / "runs")
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{time.time():.0f}-{dag_id}.log").write_text(out)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"run_dag.py printed no result:\n{out[-3000:]}"
    print(f"\n{dag_id} {json.dumps(conf.get('stages', ''))}: {time.monotonic() - t0:.1f}s")
    return json.loads(lines[-1][len("RESULT ") :]), out


def why(out: str) -> str:
    """A failed run's reasons first (each failed task's error lines), then the tail of its output."""
    marks = ("ERROR", "Error:", "TransientError", "UserError", "Traceback", "Task failed")
    errors = [ln for ln in out.splitlines() if any(m in ln for m in marks) and not ln.startswith("RESULT ")]
    return "\n".join(errors[-40:]) + "\n---\n" + out[-2500:]


def tis(result: dict, task_id: str) -> dict[str, dict]:
    """Task instances of task_id by node name (mapped) or '' (unmapped)."""
    return {(t["rendered_map_index"] or ""): t for t in result["tis"] if t["task_id"] == task_id}


def snapshot(lab: Lab) -> dict[str, dict[str, str]]:
    """What each node changed in its root filesystem (its overlay upper directory)."""
    snap: dict[str, dict[str, str]] = {}
    for node in lab.nodes:
        files = {}
        for p in sorted(node.upper.rglob("*")):
            rel = str(p.relative_to(node.upper))
            if VOLATILE.match(rel) or (p.is_dir() and not p.is_symlink()):
                continue
            if p.is_symlink():
                files[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                files[rel] = "special"
        snap[node.name] = files
    return snap


def changed_files(before: dict, after: dict) -> dict[str, list[str]]:
    out = {}
    for node in before:
        a, b = before[node], after[node]
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            out[node] = diff
    return out


def conf(lab: Lab, **kw) -> dict:
    return {"inventory": str(lab.inventory_path), "stages": STAGES, **kw}


def api(lab: Lab, *argv: str) -> dict:
    return json.loads(lab.kubectl(*argv, "-o", "json").stdout)


def ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def wait_for(what: str, check, timeout: float = 180, interval: float = 2):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def assert_cluster(lab: Lab) -> None:
    """3 Ready nodes at the pinned version, CoreDNS, flannel and kube-proxy running: read from the API."""
    from datacloud.render import versions

    want = "v" + str(versions()["kubernetes"]["version"]).lstrip("v")
    nodes = {n["metadata"]["name"]: n for n in api(lab, "get", "nodes")["items"]}
    assert sorted(nodes) == ["n1", "n2", "n3"]
    for name, n in nodes.items():
        assert ready(n), (name, n["status"]["conditions"])
        assert n["status"]["nodeInfo"]["kubeletVersion"] == want
        assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6.")
    assert "node-role.kubernetes.io/control-plane" in nodes["n1"]["metadata"]["labels"]
    # verify needs one ready CoreDNS replica; the second may still be starting when the run ends
    dns = wait_for(
        "every CoreDNS replica ready",
        lambda: (
            (d := api(lab, "-n", "kube-system", "get", "deployment", "coredns"))["status"].get("readyReplicas")
            == d["spec"]["replicas"]
            and d
        ),
        timeout=120,
    )
    assert dns["status"]["readyReplicas"] == dns["spec"]["replicas"] >= 1
    for ns, ds in (("kube-system", "kube-proxy"), ("kube-flannel", "kube-flannel-ds")):
        obj = api(lab, "-n", ns, "get", "daemonset", ds)
        assert obj["status"].get("numberReady") == obj["status"]["desiredNumberScheduled"] == 3, (ds, obj["status"])


# --- 1. dry run ------------------------------------------------------------------


def test_dry_run_changes_nothing(lab: Lab, env: dict[str, str]) -> None:
    before = snapshot(lab)
    result, out = run_dag(env, "provision_platform", conf(lab, dry_run=True))
    assert result["state"] == "success", why(out)
    assert changed_files(before, snapshot(lab)) == {}  # nothing written inside any node
    assert "would install kubelet=1.34.2-1.1 kubeadm=1.34.2-1.1 kubectl=1.34.2-1.1" in out
    assert "would comment out swap entries in /etc/fstab" in out
    for node in lab.nodes:
        assert not node.path("/etc/containerd/config.toml").exists()
        assert not node.path("/usr/bin/kubelet").exists()
        assert "\n/swapfile" in node.path("/etc/fstab").read_text()


# --- 2. first run: a real cluster ----------------------------------------------------


def test_first_run_makes_a_real_cluster(lab: Lab, env: dict[str, str]) -> None:
    t0 = time.monotonic()
    result, out = run_dag(env, "provision_platform", conf(lab))
    assert result["state"] == "success", why(out)
    assert set(tis(result, "node_prep.prepare")) == {"n1", "n2", "n3"}  # one grid entry per node
    assert set(tis(result, "kubernetes.join")) == {"n2", "n3"}
    skipped = {t["task_id"].split(".")[0] for t in result["tis"] if t["state"] == "skipped"}
    assert skipped == {"jupyter", "monitoring"}  # not selected

    for node in lab.nodes:
        fstab = node.path("/etc/fstab").read_text()
        assert re.search(r"^# /swapfile\s+none\s+swap", fstab, re.M)
        assert node.path("/etc/modules-load.d/datacloud-k8s.conf").read_text() == "overlay\nbr_netfilter\n"
        containerd = node.path("/etc/containerd/config.toml").read_text()
        assert re.search(r"^\s*SystemdCgroup = false$", containerd, re.M)  # kubernetes.cgroup_driver: cgroupfs
        assert 'sandbox_image = "registry.k8s.io/pause:3.10.1"' in containerd
        assert (node.path("/etc/containerd/certs.d/registry.k8s.io/hosts.toml")).read_text().count(lab.registry_url) == 1
        status = node.path("/var/lib/dpkg/status").read_text()
        for pkg in ("kubelet", "kubeadm", "kubectl"):
            assert re.search(rf"^Package: {pkg}\nStatus: hold ok installed\n(?:.+\n)*?Version: 1\.34\.2-1\.1$", status, re.M), pkg
        assert node.path("/etc/datacloud/cluster-name").read_text().strip() == f"lab{lab.id}"
        assert not node.path("/etc/datacloud/kubeadm-join.yaml").exists()  # the token file is removed after the join
    assert "masquerade" in lab.nodes[0].path("/etc/datacloud/gateway.nft").read_text()

    assert_cluster(lab)
    # the admin kubeconfig is the connection datacloud_kube, and never printed
    admin = lab.nodes[0].path("/etc/kubernetes/admin.conf").read_text()
    key = re.search(r"client-key-data: (\S+)", admin).group(1)
    assert key not in out
    got = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "connections", "get", "datacloud_kube", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    stored = json.loads(got.stdout)[0]
    extra = stored.get("extra_dejson") or json.loads(stored.get("extra") or "{}")
    assert stored["conn_type"] == "kubernetes"
    assert extra["kube_config"] == admin
    assert "verify | Summary" in out
    assert re.search(r"CoreDNS: 2/2 ready", out)
    assert re.search(r"local-path-storage/deployment/local-path-provisioner +1/1", out)  # the storage stage's workload
    _secrets_are_encrypted_in_etcd(lab, env, out)
    print(f"first run of {len(STAGES)} stages on 3 nodes: {time.monotonic() - t0:.1f}s")


def etcd_get(lab: Lab, *argv: str) -> bytes:
    """etcdctl (built by ./dev setup) against the control plane's etcd, with kubeadm's health-check client cert."""
    from tests.lab import mirror

    cp = lab.nodes[0]
    pki = "/etc/kubernetes/pki/etcd"
    return subprocess.run(
        [str(mirror.bin_dir("etcd") / "etcdctl"), f"--endpoints=https://{cp.address}:2379",
         f"--cacert={cp.path(pki + '/ca.crt')}", f"--cert={cp.path(pki + '/healthcheck-client.crt')}",
         f"--key={cp.path(pki + '/healthcheck-client.key')}", "get", *argv],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip


def _secrets_are_encrypted_in_etcd(lab: Lab, env: dict[str, str], out: str) -> None:
    """Encryption at rest (issue 12, item 8): every Secret in etcd is secretbox ciphertext under
    the key kept in the connection datacloud_kube_encryption; the key is root's only and never logged."""
    import yaml

    cp = lab.nodes[0]
    path = cp.path("/etc/kubernetes/encryption/config.yaml")
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    (key,) = yaml.safe_load(path.read_text())["resources"][0]["providers"][0]["secretbox"]["keys"]
    assert key["secret"] not in out
    got = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "connections", "get", "datacloud_kube_encryption", "-o", "json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    stored = json.loads(got.stdout)[0]
    assert (stored.get("extra_dejson") or json.loads(stored.get("extra") or "{}"))["keys"] == [key]
    lab.kubectl(
        "create", "secret", "generic", "lab-encryption-probe", "--namespace=default", "--from-literal=word=plaintext-marker"
    )
    value = etcd_get(lab, "/registry/secrets/default/lab-encryption-probe", "--print-value-only")
    assert value.startswith(f"k8s:enc:secretbox:v1:{key['name']}:".encode()), value[:40]
    assert b"plaintext-marker" not in value and b"cGxhaW50ZXh0LW1hcmtlcg" not in value
    # every Secret: kubeadm's own (bootstrap tokens, made by init) too, since the file is there before init
    keys = [k for k in etcd_get(lab, "/registry/secrets/", "--prefix", "--keys-only").decode().split() if k]
    assert len(keys) >= 2, keys
    for name in keys:
        assert etcd_get(lab, name, "--print-value-only").startswith(b"k8s:enc:secretbox:v1:"), name
    lab.kubectl("delete", "secret", "lab-encryption-probe", "--namespace=default")


def test_pods_on_different_nodes_reach_each_other_a_service_and_dns(lab: Lab) -> None:
    from tests.lab.mirror import PROBE_REF

    ns = "lab-probe"
    serve = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
    objects = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]
    for node in ("n2", "n3"):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"web-{node}", "namespace": ns, "labels": {"app": f"web-{node}"}},
                "spec": {
                    "nodeName": node,
                    "containers": [{"name": "web", "image": PROBE_REF, "command": ["sh", "-c", serve]}],
                    "terminationGracePeriodSeconds": 0,
                },
            }
        )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web-n2"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )
    lab.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    try:
        lab.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s", timeout=150)
        pods = {p["spec"]["nodeName"]: p for p in api(lab, "-n", ns, "get", "pods")["items"]}
        assert pods["n2"]["status"]["podIP"] != pods["n3"]["status"]["podIP"]
        svc_ip = api(lab, "-n", ns, "get", "service", "web")["spec"]["clusterIP"]

        def from_n3(*argv: str) -> str:
            return lab.kubectl("-n", ns, "exec", "web-n3", "--", *argv, timeout=60).stdout

        def get(url: str) -> str:
            # busybox-static 1.35.0 (Debian) wget crashes with its own -T: bounded by timeout instead
            return from_n3("sh", "-c", f"timeout 10 wget -q -O /tmp/got {url} && cat /tmp/got && rm /tmp/got").strip()

        # a process started by exec sees the container's root, not the node's or this machine's
        assert "work" not in from_n3("ls", "/").split() and from_n3("ls", "/usr/bin/busybox").strip() == "/usr/bin/busybox"
        # pod to pod across nodes (flannel's vxlan between n3 and n2)
        assert get(f"http://{pods['n2']['status']['podIP']}:8080/") == "web-n2"
        # the ClusterIP Service (kube-proxy's nftables rules on n3)
        assert get(f"http://{svc_ip}/") == "web-n2"
        # CoreDNS resolves the Service's name (busybox's own resolver: the pod's resolv.conf names CoreDNS)
        looked_up = from_n3("nslookup", f"web.{ns}.svc.cluster.local")
        assert re.search(rf"Address:\s*{re.escape(svc_ip)}\b", looked_up), looked_up
        assert "10.96.0.10" in from_n3("cat", "/etc/resolv.conf")  # the cluster DNS Service of kubeadm-config.yaml
    finally:
        lab.kubectl("delete", "namespace", ns, "--timeout=90s", check=False, timeout=120)


def test_local_path_makes_a_volume_on_the_node_of_its_pod_and_removes_it_with_the_claim(lab: Lab) -> None:
    """The storage stage's local-path provisioner (built from its Go module, pushed to the lab
    registry) for real: a claim binds when a pod on n3 uses it, the data lands in n3's
    /var/lib/datacloud/local-path, and deleting the claim removes it (reclaimPolicy Delete)."""
    from datacloud.render import versions
    from datacloud.stages.storage import LOCAL_PATH_CLASS, LOCAL_PATH_DIR, LOCAL_PATH_NAMESPACE

    deploy = api(lab, "-n", LOCAL_PATH_NAMESPACE, "get", "deployment", "local-path-provisioner")
    assert deploy["status"].get("readyReplicas") == 1, deploy["status"]
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == versions()["storage"]["local_path_image"]
    sc = api(lab, "get", "storageclass", LOCAL_PATH_CLASS)
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    ns, name = "lab-volume", "data"
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
        },  # no class named: the default one
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "writer", "namespace": ns},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": "n3"},
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "w",
                        "image": versions()["storage"]["local_path_helper_image"],
                        "command": ["sh", "-c", "echo written-on-$(hostname) > /data/proof"],
                        "volumeMounts": [{"name": "d", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": name}}],
            },
        },
    ]
    lab.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    try:
        pending = api(lab, "-n", ns, "get", "pvc", name)["status"]["phase"]
        assert pending in ("Pending", "Bound")  # WaitForFirstConsumer: bound once the pod is scheduled
        wait_for(
            "the writer pod succeeded",
            lambda: api(lab, "-n", ns, "get", "pod", "writer")["status"].get("phase") == "Succeeded",
            timeout=180,
        )
        claim = api(lab, "-n", ns, "get", "pvc", name)
        assert claim["status"]["phase"] == "Bound" and claim["spec"]["storageClassName"] == LOCAL_PATH_CLASS
        pv = api(lab, "get", "pv", claim["spec"]["volumeName"])
        path = pv["spec"]["hostPath"]["path"] if "hostPath" in pv["spec"] else pv["spec"]["local"]["path"]
        assert path.startswith(LOCAL_PATH_DIR + "/"), path
        terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["values"] == ["n3"]
        n3 = lab.nodes[2]
        assert n3.path(path + "/proof").read_text().startswith("written-on-writer")
        assert not lab.nodes[1].path(path).exists()
    finally:
        lab.kubectl("delete", "namespace", ns, "--timeout=90s", check=False, timeout=120)
    # the PV goes with its claim, and the teardown helper pod removes the folder on n3
    gone = "persistentvolume/" + pv["metadata"]["name"]
    wait_for(
        "the volume removed",
        lambda: not n3.path(path).exists() and gone not in lab.kubectl("get", "pv", "-o", "name").stdout.split(),
        timeout=120,
    )


def test_spark_on_kubernetes_runs_its_driver_and_executors_as_pods_on_the_lab_nodes(lab: Lab, workdir: Path) -> None:
    """Real Spark on the lab cluster: the pyspark wheel's spark-submit (its spark-kubernetes backend)
    submits in cluster mode to the lab's API server; the driver and two executors are pods of the
    lab's Spark image (assembled by tests/lab/mirror.py, pulled from the lab registry) on the nodes,
    and the driver's log has the job's answer."""
    from datacloud.localstack import java_home
    from datacloud.render import versions
    from tests.lab import mirror

    ns, image = "lab-spark", mirror.image_refs()["spark"]
    assert image == f"{mirror.OWN_REGISTRY}/{versions()['spark']['image']}"
    rules = [{"apiGroups": [""], "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"], "verbs": ["*"]}]
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "spark", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "spark", "namespace": ns},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "spark", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "spark"},
         "subjects": [{"kind": "ServiceAccount", "name": "spark", "namespace": ns}]},
    ]  # fmt: skip
    lab.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig()), "SPARK_HOME": str(spark_home)}
    if java_home():
        env["JAVA_HOME"] = str(java_home())
    confs = {
        "spark.kubernetes.namespace": ns,
        "spark.kubernetes.authenticate.driver.serviceAccountName": "spark",
        "spark.kubernetes.container.image": image,
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent",
        "spark.kubernetes.submission.waitAppCompletion": "true",
        "spark.kubernetes.executor.deleteOnTermination": "false",  # read their nodes below
        "spark.executor.instances": "2",
        "spark.driver.memory": "512m",
        "spark.executor.memory": "512m",
        "spark.kubernetes.driver.request.cores": "200m",
        "spark.kubernetes.executor.request.cores": "200m",
        "spark.kubernetes.driver.label.datacloud/lab": "spark-pi",
        "spark.kubernetes.executor.label.datacloud/lab": "spark-pi",
    }
    argv = [str(spark_home / "bin" / "spark-submit"), "--master", f"k8s://https://{lab.nodes[0].address}:6443",
            "--deploy-mode", "cluster", "--name", "lab-pi"]  # fmt: skip
    for k, v in confs.items():
        argv += ["--conf", f"{k}={v}"]
    argv += ["local:///opt/spark/examples/src/main/python/pi.py", "8"]
    t0 = time.monotonic()
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=workdir)
        took = time.monotonic() - t0
        pods = api(lab, "-n", ns, "get", "pods", "-l", "datacloud/lab=spark-pi")["items"]
        roles = {p["metadata"]["name"]: (p["metadata"]["labels"].get("spark-role"), p["spec"].get("nodeName"),
                                         p["status"].get("phase")) for p in pods}  # fmt: skip
        driver = next((n for n, r in roles.items() if r[0] == "driver"), None)
        log = lab.kubectl("-n", ns, "logs", driver, check=False).stdout if driver else ""
        assert out.returncode == 0, f"{out.stdout[-3000:]}{out.stderr[-3000:]}\n{roles}\n{log[-3000:]}"
        assert re.search(r"^Pi is roughly 3\.1\d*$", log, re.M), log[-3000:]
        executors = [r for r in roles.values() if r[0] == "executor"]
        assert len(executors) == 2 and roles[driver][2] == "Succeeded", roles
        assert all(r[1] in {"n1", "n2", "n3"} for r in roles.values()), roles
        print(f"\nspark-pi on the lab cluster: {took:.1f}s; pods on nodes {sorted(r[1] for r in roles.values())}")
    finally:
        lab.kubectl("delete", "namespace", ns, "--timeout=120s", check=False, timeout=150)


def test_the_spark_stage_runs_on_the_lab_with_the_operators_double(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the first run's spark stage made, read from the API: the operator's chart (real, from the lab's
    chart repository) with its image stood in by tests/lab/spark_operator_double.py; the History Server
    (the lab's real Spark image); the SparkConnect server Ready with an executor admitted by the real
    ValidatingAdmissionPolicy. Then a SparkApplication of the platform's spec runs as real driver and
    executor pods, the double writes its status, the History Server lists the run, and deleting the
    application deletes its pods."""
    from datacloud.inventory import load_inventory
    from datacloud.kube import Kube
    from datacloud.stages import spark
    from datacloud.stages.apps_common import SPARK_CONNECT_NS, SPARK_JOBS_NS, SPARK_OPERATOR_NS

    _remote_env(lab, env, monkeypatch)
    inv = load_inventory(lab.inventory_path)
    for deploy in ("spark-operator-controller", "spark-operator-webhook"):
        d = api(lab, "-n", SPARK_OPERATOR_NS, "get", "deployment", deploy)
        assert d["status"].get("readyReplicas") == 1, (deploy, d["status"])
    assert api(lab, "-n", SPARK_JOBS_NS, "get", "deployment", "spark-history-server")["status"].get("readyReplicas") == 1
    hook = api(lab, "get", "mutatingwebhookconfiguration", "spark-operator-webhook")
    assert all(w["clientConfig"].get("caBundle") for w in hook["webhooks"])  # the webhook double's CA
    connect = api(lab, "-n", SPARK_CONNECT_NS, "get", "sparkconnect", spark.CONNECT_NAME)
    assert connect["status"]["state"] == "Ready", connect["status"]
    server = api(lab, "-n", SPARK_CONNECT_NS, "get", "pod", spark.CONNECT_SERVICE)
    assert server["spec"]["serviceAccountName"] == spark.CONNECT_SA and server["status"]["phase"] == "Running"
    executors = wait_for(
        "a Connect executor running",
        lambda: [p for p in api(lab, "-n", SPARK_CONNECT_NS, "get", "pods", "-l", "spark-role=executor")["items"]
                 if p["status"].get("phase") == "Running"],
        timeout=120,
    )  # fmt: skip
    assert all(c["image"] == spark.image(inv) for p in executors for c in p["spec"]["containers"])
    # the first run's listener recorded the stage's link for the Airflow UI (where ./dev tunnels forwards it)
    from datacloud.platform_state import load_state

    links = {svc.key: url for svc, url in load_state().links()}
    assert links.get("spark_history") == "http://127.0.0.1:18080", load_state().data

    name = f"lab-pi-{os.getpid()}"
    app = {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": SPARK_JOBS_NS},
        "spec": spark.application_spec(inv, name=name, args=["8"], ttl_s=600),
    }
    t0 = time.monotonic()
    with Kube(inv) as kube:
        kube.apply([app])  # admitted by the chart's validating webhook (failurePolicy Fail): the double answered

        def state() -> dict | None:
            st = (kube.get_json("sparkapplication", name, namespace=SPARK_JOBS_NS) or {}).get("status") or {}
            return st if (st.get("applicationState") or {}).get("state") in spark.TERMINAL_STATES else None

        final = wait_for(f"SparkApplication {name} finished", state, timeout=420, interval=3)
        ran = time.monotonic() - t0
        driver = api(lab, "-n", SPARK_JOBS_NS, "get", "pod", f"{name}-driver")
        log = lab.kubectl("-n", SPARK_JOBS_NS, "logs", f"{name}-driver", check=False).stdout
        controller = lab.kubectl("-n", SPARK_OPERATOR_NS, "logs", "deployment/spark-operator-controller",
                                 check=False).stdout  # fmt: skip
        assert final["applicationState"]["state"] == "COMPLETED", (final, log[-2000:], controller[-3000:])
        assert re.search(r"^Pi is roughly 3\.1\d*$", log, re.M), log[-2000:]
        assert final["sparkApplicationId"] == driver["metadata"]["labels"]["spark-app-selector"]
        assert final["executorState"] and set(final["executorState"].values()) <= {"COMPLETED", "RUNNING"}, final
        assert driver["metadata"]["labels"]["sparkoperator.k8s.io/app-name"] == name
        assert driver["metadata"]["ownerReferences"][0]["kind"] == "SparkApplication"
        assert driver["spec"]["serviceAccountName"] == "spark"
        # the event log went to the shared claim, and the History Server (the lab's Spark image) reads it
        assert wait_for(
            "the History Server lists the run",
            lambda: any(a.get("id") == final["sparkApplicationId"] for a in spark.history_applications(kube)),
            timeout=120,
            interval=3,
        )
        print(f"\nSparkApplication through the operator's double: {ran:.1f}s")
        # deleting the application deletes its pods (the owner reference the operator sets)
        kube.kubectl("delete", "sparkapplication", name, "--namespace", SPARK_JOBS_NS, "--wait=true")
    wait_for(
        "the driver pod deleted with its application",
        lambda: lab.kubectl("-n", SPARK_JOBS_NS, "get", "pod", f"{name}-driver", check=False).returncode != 0,
        timeout=120,
    )


def test_drill_the_history_server_comes_back_with_its_data_after_its_pod_is_deleted(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault drill: delete the History Server's pod. Its Deployment makes a new one (our Spark image), which
    reads the same event-log claim and lists every application the old one listed (the first run's
    verification, the pi run above), with nothing re-submitted."""
    from datacloud.inventory import load_inventory
    from datacloud.kube import Kube
    from datacloud.stages import spark
    from datacloud.stages.apps_common import SPARK_JOBS_NS

    _remote_env(lab, env, monkeypatch)
    deploy = api(lab, "-n", SPARK_JOBS_NS, "get", "deployment", spark.HISTORY_SERVICE)
    selector = ",".join(f"{k}={v}" for k, v in deploy["spec"]["selector"]["matchLabels"].items())
    with Kube(load_inventory(lab.inventory_path)) as kube:
        before = {a["id"] for a in spark.history_applications(kube)}
        assert len(before) >= 2, before
        (old,) = api(lab, "-n", SPARK_JOBS_NS, "get", "pods", "-l", selector)["items"]
        t0 = time.monotonic()
        lab.kubectl("-n", SPARK_JOBS_NS, "delete", "pod", old["metadata"]["name"], "--wait=false")

        def back() -> set[str] | None:
            pods = api(lab, "-n", SPARK_JOBS_NS, "get", "pods", "-l", selector)["items"]
            fresh = [p for p in pods if p["metadata"]["uid"] != old["metadata"]["uid"] and ready(p)]
            listed = {a["id"] for a in spark.history_applications(kube)} if fresh else set()
            return listed if listed >= before else None

        after = wait_for("a new History Server pod listing the same applications", back, timeout=240, interval=3)
    print(f"\nHistory Server pod deleted, a new one lists the {len(after)} applications again: {time.monotonic() - t0:.1f}s")


def test_the_mongo_stage_runs_a_sharded_cluster_of_stand_ins_with_real_claims_and_users(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the first run's mongo stage made, read from the API: the operator's charts (real) with the
    operator stood in by tests/lab/psmdb_operator_double.py, one replica set per shard plus the config
    servers, members spread over the three nodes with their claims bound on the nodes they run on, the
    routers behind the Service the connection names, the cluster object ready. Then through mongos (an SSH
    forward from the control plane, as the stage's sharding step goes): the application user writes and
    reads the platform's database, may not touch another or run cluster commands, and a wrong password fails."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    from datacloud.forward import ssh_forward
    from datacloud.inventory import load_inventory
    from datacloud.kube import Kube
    from datacloud.stages import mongo

    _remote_env(lab, env, monkeypatch)
    inv = load_inventory(lab.inventory_path)
    m = inv.components.mongo
    assert api(lab, "-n", mongo.NAMESPACE, "get", "deployment", "psmdb-operator")["status"].get("readyReplicas") == 1
    cr = api(lab, "-n", mongo.NAMESPACE, "get", "perconaservermongodb", mongo.CLUSTER)
    assert cr["status"]["state"] == "ready", cr["status"]
    assert sorted(cr["status"]["replsets"]) == sorted([*mongo.shard_names(m), "cfg"])
    pods = api(lab, "-n", mongo.NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/instance={mongo.CLUSTER}")["items"]
    claims = {c["metadata"]["name"]: c for c in api(lab, "-n", mongo.NAMESPACE, "get", "pvc")["items"]}
    pvs = {v["metadata"]["name"]: v for v in api(lab, "get", "pv")["items"]}
    for rs in [*mongo.shard_names(m), "cfg"]:
        members = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/replset") == rs]
        size = m.replicas if rs != "cfg" else m.config_replicas
        assert len(members) == size and all(p["status"]["phase"] == "Running" for p in members), rs
        assert len({p["spec"]["nodeName"] for p in members}) == size  # the anti-affinity of the cluster object
        for p in members:
            claim = claims[f"mongod-data-{p['metadata']['name']}"]
            assert claim["status"]["phase"] == "Bound" and claim["spec"]["storageClassName"] == mongo.storage_classes(inv)["rwo"]
            pinned = pvs[claim["spec"]["volumeName"]]["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
            assert pinned[0]["matchExpressions"][0]["values"] == [p["spec"]["nodeName"]]  # local-path: on its node
    routers = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "mongos"]
    assert len(routers) == m.mongos
    svc = api(lab, "-n", mongo.NAMESPACE, "get", "service", f"{mongo.CLUSTER}-mongos")
    assert svc["spec"]["selector"] == {**svc["spec"]["selector"], **mongo.MONGOS_LABELS}

    with Kube(inv) as kube:
        app = mongo.secret_values(kube, f"{mongo.CLUSTER}-app")
        transport = kube.remote.connect().get_transport()
        with ssh_forward(transport, svc["spec"]["clusterIP"], mongo.MONGO_PORT) as (host, port):

            def client(password: str) -> MongoClient:
                return MongoClient(host=host, port=port, username=mongo.APP_USER, password=password, authSource="admin",
                                   directConnection=True, serverSelectionTimeoutMS=20_000)  # fmt: skip

            with client(app["password"]) as c:
                db = c[mongo.MONGO_DATABASE]
                db.lab_probe.delete_many({})
                db.lab_probe.insert_many([{"_id": i, "day": f"2024-01-0{i % 3 + 1}"} for i in range(20)])
                assert db.lab_probe.count_documents({"day": "2024-01-01"}) == 7
                for denied in (lambda: c.other.x.insert_one({}), lambda: c.admin.command("enableSharding", "other")):
                    with pytest.raises(OperationFailure) as exc:
                        denied()
                    assert exc.value.code == 13  # Unauthorized: the application user's roles
                db.lab_probe.drop()
            with pytest.raises(OperationFailure), client(app["password"] + "x") as c:
                c[mongo.MONGO_DATABASE].command("ping")
    # the store is FerretDB on the first shard's first member, on its claim on that member's node
    store = next(p for p in pods if p["metadata"]["name"] == f"{mongo.CLUSTER}-{mongo.shard_names(m)[0]}-0")
    node = next(x for x in lab.nodes if x.name == store["spec"]["nodeName"])
    folder = node.path("/var/lib/datacloud/local-path")
    assert any(folder.glob(f"pvc-*_mongo_mongod-data-{store['metadata']['name']}/{mongo.MONGO_DATABASE}*")), list(
        folder.iterdir()
    )
    # the stage stored the application user's URI as the Airflow connection, and never printed a password
    got = subprocess.run([str(Path(sys.executable).parent / "airflow"), "connections", "get", mongo.MONGO_CONN_ID, "-o", "json"],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    stored = json.loads(got.stdout)[0]
    assert (stored["host"], int(stored["port"]), stored["login"]) == (mongo.mongos_host(), mongo.MONGO_PORT, mongo.APP_USER)
    assert stored["password"] == app["password"]


def _stats(uri: str, day: str) -> dict[str, list[dict]]:
    from pymongo import MongoClient

    from datacloud.pipelines import flights

    with MongoClient(uri, serverSelectionTimeoutMS=20_000) as c:
        db = c.get_default_database()
        return {
            coll: sorted(db[coll].find({"date": day}), key=lambda d: d["_id"])
            for coll in (flights.DELAY_STATS, flights.ORIGIN_WEATHER)
        }


def test_a_flights_day_on_the_kubernetes_target_runs_as_a_sparkapplication_and_equals_the_local_target(
    lab: Lab, env: dict[str, str]
) -> None:
    """etl_flights_daily for one day with DATACLOUD_SPARK_TARGET=kubernetes: the provider's SparkKubernetesOperator
    submits with the spark stage's namespaced connection, the operator's double runs the real spark-submit, the
    driver and executor (the lab's Spark image) read the day's flights from the cluster's mongos with the Secret the
    spark stage wrote and its weather from the application's landing ConfigMap, and write the day's statistics.
    Airflow on this host reaches mongos as an administrator does, through an SSH forward from the control plane
    (Lab.mongo_env, what ./dev lab env prints). The statistics equal those of the local target for the same day; the
    driver's log is in the task log; the application and its landing ConfigMap are gone after the task."""
    from pymongo import MongoClient

    from datacloud.pipelines import flights
    from datacloud.spark import K8S_NAMESPACE

    day = "2013-01-02"
    logical = "2013-01-03T00:00:00+00:00"  # a daily run's logical date ends its interval: the day before
    mongo_env = {**env, **lab.mongo_env()}  # what ./dev lab env prints
    uri = mongo_env["DATACLOUD_MONGO_URI"]
    result, out = run_dag({**mongo_env, "DATACLOUD_SPARK_TARGET": "local"}, flights.DAG_ID, {}, logical_date=logical)
    assert result["state"] == "success", why(out)
    local = _stats(uri, day)
    assert local[flights.DELAY_STATS] and local[flights.ORIGIN_WEATHER]
    with MongoClient(uri, serverSelectionTimeoutMS=20_000) as c:  # what the kubernetes target must write again
        for coll in local:
            c.get_default_database()[coll].delete_many({"date": day})
    t0 = time.monotonic()
    result, out = run_dag({**mongo_env, "DATACLOUD_SPARK_TARGET": "kubernetes"}, flights.DAG_ID, {}, logical_date=logical)
    took = time.monotonic() - t0
    controller = lab.kubectl(
        "-n", "spark-operator", "logs", "deployment/spark-operator-controller", "--tail=60", check=False
    ).stdout
    assert result["state"] == "success", why(out) + "\n--- operator double ---\n" + controller
    assert {t["task_id"]: t["state"] for t in result["tis"]}["transform"] == "success"
    assert re.search(r"DATACLOUD_RESULT \{.*\"date\": \"2013-01-02\"", out), out[-3000:]  # the driver's log, in the task log
    assert _stats(uri, day) == local
    leftovers = api(lab, "-n", K8S_NAMESPACE, "get", "sparkapplications,configmaps", "-l", "datacloud/date=" + day)["items"]
    assert leftovers == [], [o["metadata"]["name"] for o in leftovers]
    print(f"\na day of etl_flights_daily on the kubernetes target: {took:.1f}s (local target in the same lab: see above)")


# --- 3. second run, with n2's SSH session killed in the middle of its task --------------------


def _kill_session_when(lab: Lab, node, marker: bytes, killed: threading.Event, deadline_s: float = 300) -> None:
    """When a process whose command line holds MARKER runs in NODE, kill its sshd session (a lost connection)."""
    ns = os.readlink(f"/proc/{node.root_pid()}/ns/pid")
    listener = node.root_pid()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != ns or marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                chain, p = [], int(pid)
                while p and p != listener:  # up to the child of the listening sshd: the session
                    chain.append(p)
                    p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            for p in reversed(chain):  # the session first, then what it ran
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            killed.set()
            return
        time.sleep(0.01)


def test_second_run_unchanged_everywhere_even_after_a_lost_ssh_session(lab: Lab, env: dict[str, str]) -> None:
    before = snapshot(lab)
    versions_before = {n["metadata"]["name"]: n["metadata"]["resourceVersion"] for n in api(lab, "get", "nodes")["items"]}
    killed = threading.Event()
    t = threading.Thread(target=_kill_session_when, args=(lab, lab.nodes[1], b"node-prep.sh", killed), daemon=True)
    t.start()
    t0 = time.monotonic()
    result, out = run_dag(env, "provision_platform", conf(lab))
    t.join(timeout=30)
    assert killed.is_set(), "node_prep never ran on n2"
    assert result["state"] == "success", why(out)
    prep = tis(result, "node_prep.prepare")
    assert prep["n2"]["try_number"] >= 2
    assert prep["n1"]["try_number"] == 1
    assert re.search(r"n2 \([0-9.]+\): SSH connection (lost|failed)|n2 \([0-9.]+\).*(closed|lost)", out), out[-3000:]

    assert changed_files(before, snapshot(lab)) == {}
    changed = re.findall(r"^.*\| (?:changed|would change) \d+ thing.*$", out, re.M)
    assert changed == []
    for stage_step in (
        "preflight | check",
        "gateway | forward",
        "gateway | n2",
        "node_prep | n1",
        "node_prep | n2",
        "node_prep | n3",
        "kubernetes | init",
        "kubernetes | n2",
        "kubernetes | n3",
        "kubernetes | encryption_key",
        "network | install",
        "storage | apply",
        "storage | health",
        "storage | prove",
        "mongo | apply",
        "mongo | ready",
        "mongo | sharding",
        "mongo | connection",
        "spark | apply",
        "spark | connections",
        "spark | verify",
        "verify | summary",
    ):
        assert f"{stage_step} | unchanged" in out, stage_step
    assert_cluster(lab)
    assert sorted(versions_before) == ["n1", "n2", "n3"]
    print(f"second run of {len(STAGES)} stages on 3 nodes: {time.monotonic() - t0:.1f}s")


PLATFORM_KINDS = (
    "namespaces,serviceaccounts,secrets,configmaps,services,persistentvolumeclaims,deployments,statefulsets,daemonsets,"
    "roles,rolebindings,clusterroles,clusterrolebindings,networkpolicies,poddisruptionbudgets,storageclasses,"
    "validatingadmissionpolicies,validatingadmissionpolicybindings,perconaservermongodbs,sparkconnects,"
    "scheduledsparkapplications"
)


def _object_versions(lab: Lab) -> dict[str, str]:
    """Every object the stages applied (the platform's label) and every Helm release record: kind/namespace/name ->
    its generation where the kind has one (a controller writing status does not move it), else its resourceVersion."""
    out = {}
    for selector in ("app.kubernetes.io/part-of=datacloud", "owner=helm"):
        kinds = PLATFORM_KINDS if selector != "owner=helm" else "secrets"
        for o in api(lab, "get", kinds, "--all-namespaces", "-l", selector)["items"]:
            m = o["metadata"]
            out[f"{o['kind']}/{m.get('namespace', '')}/{m['name']}"] = str(m.get("generation") or m["resourceVersion"])
    return out


def test_a_dry_run_on_the_running_platform_changes_no_object(lab: Lab, env: dict[str, str]) -> None:
    """Every stage's dry run against the running cluster: the same objects afterwards, at the same versions (read
    from the API), and nothing written inside any node."""
    before, files = _object_versions(lab), snapshot(lab)
    assert len(before) > 50 and any(k.startswith("PerconaServerMongoDB/") for k in before)
    result, out = run_dag(env, "provision_platform", conf(lab, dry_run=True))
    assert result["state"] == "success", why(out)
    after = _object_versions(lab)
    assert {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {}
    assert changed_files(files, snapshot(lab)) == {}
    print(f"\ndry run on the running platform: {len(before)} objects at the same versions")


# --- 4. what the administrator sees when a node fails -------------------------------------


def _remote_env(lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**lab.env(), "AIRFLOW_HOME": env["AIRFLOW_HOME"]}.items():
        monkeypatch.setenv(key, value)


def _encryption_keys(lab: Lab) -> list[dict]:
    import yaml

    text = lab.nodes[0].path("/etc/kubernetes/encryption/config.yaml").read_text()
    return yaml.safe_load(text)["resources"][0]["providers"][0]["secretbox"]["keys"]


def test_the_encryption_key_rotates_and_every_secret_follows(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md: annotate kube-system, run the kubernetes stage; new key first, every
    Secret rewritten, old key dropped (issue 12, item 8)."""
    from datacloud.stages._common import run_step

    (old,) = _encryption_keys(lab)
    lab.kubectl("annotate", "namespace", "kube-system", "datacloud/rotate-encryption-key=true")
    t0 = time.monotonic()
    result, out = run_dag(env, "provision_platform", conf(lab, stages=["kubernetes"]))
    assert result["state"] == "success", why(out)
    print(f"rotation of the encryption key (kubernetes stage run): {time.monotonic() - t0:.1f}s")
    (new,) = _encryption_keys(lab)
    assert new["name"] != old["name"] and new["secret"] != old["secret"]
    assert old["secret"] not in out and new["secret"] not in out
    assert f"rewrite every Secret with encryption key {new['name']}" in out
    assert f"drop encryption key(s) {old['name']}" in out
    names = [k for k in etcd_get(lab, "/registry/secrets/", "--prefix", "--keys-only").decode().split() if k]
    for name in names:
        assert etcd_get(lab, name, "--print-value-only").startswith(f"k8s:enc:secretbox:v1:{new['name']}:".encode()), name
    ns = api(lab, "get", "namespace", "kube-system")
    assert "datacloud/rotate-encryption-key" not in (ns["metadata"].get("annotations") or {})
    got = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "connections", "get", "datacloud_kube_encryption", "-o", "json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    stored = json.loads(got.stdout)[0]
    assert (stored.get("extra_dejson") or json.loads(stored.get("extra") or "{}"))["keys"] == [new]
    assert lab.kubectl("get", "secrets", "--all-namespaces").returncode == 0  # every Secret still decrypts
    _remote_env(lab, env, monkeypatch)
    assert run_step("kubernetes", "encryption_key", conf(lab))["changes"] == []  # done: a re-run changes nothing


def test_a_stopped_kubelet_is_reported_not_ready_in_one_sentence(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datacloud.errors import TransientError
    from datacloud.health import HealthContext, probe_nodes
    from datacloud.platform_state import PlatformState
    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    # verify pings mongos as the datacloud_mongo connection's user: outside a task, Airflow reads it from here
    monkeypatch.setenv("AIRFLOW_CONN_DATACLOUD_MONGO", lab.mongo_env()["AIRFLOW_CONN_DATACLOUD_MONGO"])
    n3 = lab.nodes[2]
    lab.node_exec(n3, "systemctl", "stop", "kubelet")
    try:
        # the node controller marks it after the node-monitor grace period (kube-controller-manager's default)
        wait_for(
            "n3 NotReady",
            lambda: not ready(api(lab, "get", "node", "n3")),
            timeout=120,
        )
        with pytest.raises(TransientError) as err:
            run_step("verify", "summary", conf(lab))
        message = str(err.value)
        assert message.startswith(f"node n3 ({n3.address}) is NotReady (NodeStatusUnknown"), message
        assert "\n" not in message and "n1" not in message and "n2" not in message

        ctx = HealthContext(state=PlatformState({"stages": {"kubernetes": {}}}), inventory_path=str(lab.inventory_path))
        try:
            _, problems = probe_nodes(ctx)
        finally:
            ctx.close()
        # the same sentence (verify may add what follows from it, e.g. CoreDNS's pods on n3 not ready)
        assert problems == [message.split("; ")[0] + "."], problems
    finally:
        lab.node_exec(n3, "systemctl", "start", "kubelet")
    wait_for("n3 Ready again", lambda: ready(api(lab, "get", "node", "n3")), timeout=120)
    # n3's pods report ready again a moment after its kubelet (verify also checks the platform's workloads)
    again = wait_for("verify passes again", lambda: _verify_passes(lab), timeout=120)
    assert (again["nodes"], again["mongo_ping"]) == (3, "ok"), again
    from datacloud.stages.verify import PART_OF

    ours = api(lab, "get", "deployments,statefulsets,daemonsets", "--all-namespaces", "-l", PART_OF)["items"]
    assert again["workloads"] == len(ours) + 4, again  # and the Percona operator's StatefulSets: rs0, rs1, cfg, mongos


def _verify_passes(lab: Lab) -> dict | None:
    from datacloud.errors import TransientError
    from datacloud.stages._common import run_step

    try:
        return run_step("verify", "summary", conf(lab))
    except TransientError as e:
        print(f"verify: {e}")
        return None


def test_changed_host_key_fails_hard_naming_the_node(lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A reinstalled machine (a new host key; the lab restarts the whole node, so this is also its reboot)."""
    import paramiko

    from datacloud.errors import UserError, fail_fast
    from datacloud.remote import HostKeyMismatchError, HostKeyStore, fingerprint
    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    n3 = lab.nodes[2]
    store = HostKeyStore(lab.data_dir / "ssh" / "known_hosts")
    recorded = fingerprint(store.get(n3.address, 22))
    lab.new_host_key(n3)
    offered = fingerprint(paramiko.Ed25519Key.from_private_key_file(str(n3.upper / "etc/ssh/ssh_host_ed25519_key")))
    assert recorded != offered
    with pytest.raises(HostKeyMismatchError) as err:
        run_step("preflight", "gather", conf(lab), node="n3")
    assert isinstance(err.value, UserError)  # tasks fail fast on it (fail_fast: no retries)
    assert str(err.value).startswith(f"n3 ({n3.address}) offered host key {offered} but {recorded} was recorded in ")
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException), fail_fast():
        run_step("node_prep", "prepare", conf(lab), node="n3")
    # the administrator's fix: forget the old key; preflight records the new one
    text = store.path.read_text()
    store.path.write_text("".join(ln + "\n" for ln in text.splitlines() if not ln.startswith(n3.address + " ")))
    assert run_step("preflight", "gather", conf(lab), node="n3")["facts"]["hostname"] == "n3"
    assert fingerprint(store.get(n3.address, 22)) == offered
    _pinned_host_keys(lab, store, n3, offered, recorded)
    # the rebooted node's services came back by themselves (containerd, kubelet), and it is Ready again
    wait_for("n3 Ready after its restart", lambda: ready(api(lab, "get", "node", "n3")), timeout=180)


def test_a_wrong_apt_key_pin_installs_nothing(lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab repository is signed; node_prep fetches its key on the node and refuses another pin."""
    import yaml

    from datacloud.errors import UserError
    from datacloud.stages._common import run_step
    from tests.lab.lab import repo_key_fingerprint

    _remote_env(lab, env, monkeypatch)
    n2 = lab.nodes[1]
    keyring = n2.path("/etc/apt/keyrings/datacloud-kubernetes.gpg")
    before = keyring.read_bytes()
    real = repo_key_fingerprint()
    wrong = ("0" * 40) if real != "0" * 40 else ("1" * 40)
    inv = lab.inventory()
    inv["packages"]["apt_key_fingerprint"] = wrong
    path = lab.state / "inventory-wrong-apt-key.yaml"
    path.write_text(yaml.safe_dump(inv))
    snap = snapshot(lab)
    with pytest.raises(UserError) as err:
        run_step("node_prep", "prepare", {**conf(lab), "inventory": str(path)}, node="n2")
    assert str(err.value) == (
        f"n2 ({n2.address}): the Kubernetes packages' repository key at {lab.repository_url}/key.asc is {real}, "
        f"not the pinned {wrong}; nothing was installed (check the repository, or correct the pin if its key really changed)."
    )
    assert keyring.read_bytes() == before
    assert changed_files(snap, snapshot(lab)) == {}
    # the right pin: the key apt verifies InRelease with, unchanged
    assert run_step("node_prep", "prepare", conf(lab), node="n2")["changes"] == []


def _pinned_host_keys(lab: Lab, store, n3, offered: str, stale: str) -> None:
    """nodes[].ssh_host_key: checked before the first use (nothing recorded), and against what is recorded."""
    import yaml

    from datacloud.remote import HostKeyMismatchError, fingerprint
    from datacloud.stages._common import run_step

    def pinned(pin: str) -> dict:
        inv = lab.inventory()
        for node in inv["nodes"]:
            if node["name"] == "n3":
                node["ssh_host_key"] = pin
        path = lab.state / "inventory-pinned.yaml"  # an inventory folder (DATACLOUD_INVENTORY_DIRS)
        path.write_text(yaml.safe_dump(inv))
        return {**conf(lab), "inventory": str(path)}

    def forget() -> None:
        text = store.path.read_text()
        store.path.write_text("".join(ln + "\n" for ln in text.splitlines() if not ln.startswith(n3.address + " ")))

    # a recorded key that is not the pinned one
    with pytest.raises(HostKeyMismatchError) as err:
        run_step("preflight", "gather", pinned(stale), node="n3")
    assert str(err.value).startswith(
        f"n3 ({n3.address}) has host key {offered} recorded in {store.path} but the inventory pins {stale} "
    )
    # nothing recorded: a wrong pin refuses the node's key, records nothing, and no stage trusts it
    forget()
    for stage, step in (("preflight", "gather"), ("node_prep", "prepare")):
        with pytest.raises(HostKeyMismatchError) as err:
            run_step(stage, step, pinned(stale), node="n3")
        assert str(err.value) == (
            f"n3 ({n3.address}) offered host key {offered} but the inventory pins {stale} (nodes[].ssh_host_key); "
            "check that the address is the right machine, or correct the pin."
        )
        assert store.get(n3.address, 22) is None
    # the right pin: verified, then recorded, even by a stage other than preflight
    facts = run_step("node_prep", "prepare", pinned(offered), node="n3")
    assert facts["node"] == "n3"
    assert fingerprint(store.get(n3.address, 22)) == offered


def test_unreachable_node_fails_preflight_with_one_sentence(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from datacloud.remote import UnreachableError
    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    inv = lab.inventory()
    inv["nodes"].append({"name": "n9", "address": f"10.77.{lab.id}.99", "roles": ["worker"], "cpu": 2, "memory_gb": 2})
    path = lab.state / "inventory-unreachable.yaml"  # inventories live in an inventory folder (DATACLOUD_INVENTORY_DIRS)
    path.write_text(yaml.safe_dump(inv))
    with pytest.raises(UnreachableError) as err:
        run_step("preflight", "gather", {"inventory": str(path)}, node="n9")
    message = str(err.value)
    assert re.fullmatch(rf"n9 \(10\.77\.{lab.id}\.99\) is unreachable over SSH on port 22 \([^)]*\); [^.]*\.", message), message
    assert "\n" not in message


def _validate(params, conf: dict) -> None:
    params.update(conf)  # validates each value
    params.validate()


def test_hostile_params_are_rejected(lab: Lab) -> None:
    """The Params form rejects them (Airflow validates before a run exists); the tasks check again."""
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    from datacloud.stages._common import ParamsError, RunParams
    from tests.lab.run_dag import load_dag

    dag = load_dag("provision_platform")
    hostile = [
        {"inventory": "inventory.yaml; rm -rf /"},
        {"inventory": "$(touch /tmp/pwned)"},
        {"inventory": "`id`"},
        {"inventory": "../../etc/passwd"},
        {"kubernetes_version": "$(touch /tmp/pwned)"},
        {"kubernetes_version": "1.34.2; reboot"},
        {"stages": ["preflight`touch /tmp/pwned`"]},
        {"stages": "preflight; rm -rf /"},
        {"dry_run": "yes; rm -rf /"},
    ]
    # JSON schema's "$" also matches before a final newline: only the task-side check sees these
    task_side_only = [{"inventory": "inventory.yaml\n"}, {"kubernetes_version": "1.34.2\n"}]
    for bad in task_side_only:
        with pytest.raises(ParamsError):
            RunParams.from_params({"inventory": "inventory.yaml", **bad})
    for bad in hostile:
        with pytest.raises(ParamValidationError):
            _validate(copy.deepcopy(dag.params), bad)
        with pytest.raises(ParamsError) as err:
            RunParams.from_params(bad if "inventory" in bad else {"inventory": "inventory.yaml", **bad})
        sentence = str(err.value)
        assert sentence.endswith(".")
        assert sentence.count(". ") == 0
    assert not lab.nodes[0].path("/tmp/pwned").exists()


def test_nothing_unquoted_reaches_the_node_shell(lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile words and environment values arrive byte for byte; none is interpreted."""
    from datacloud.inventory import load_inventory
    from datacloud.remote import Remote

    _remote_env(lab, env, monkeypatch)
    inv = load_inventory(lab.inventory_path)
    hostile = [
        "; touch /tmp/pwned1",
        "$(touch /tmp/pwned2)",
        "`touch /tmp/pwned3`",
        "a\nb; touch /tmp/pwned4",
        "'\"\\ $HOME *",
        "",
    ]
    with Remote(inv, "n1", record_host_key=True) as r:
        res = r.run(
            ["python3", "-c", "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['HOSTILE']]))", *hostile],
            env={"HOSTILE": hostile[1] + hostile[3]},
        )
    assert json.loads(res.stdout) == [hostile, hostile[1] + hostile[3]]
    for i in range(1, 5):
        assert not lab.nodes[0].path(f"/tmp/pwned{i}").exists()


def test_kube_apply_reports_changed_then_unchanged_and_dry_run_applies_nothing(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API the later stages use (kubectl runs on the control plane over SSH), against the real server."""
    from datacloud.inventory import load_inventory
    from datacloud.kube import Kube

    _remote_env(lab, env, monkeypatch)
    inv = load_inventory(lab.inventory_path)
    name = f"datacloud-probe-{os.getpid()}"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"a": "1"}}
    with Kube(inv, dry_run=True) as kube:
        assert kube.available()
        assert kube.apply([cm]).changed == [f"ConfigMap/default/{name}"]
    assert lab.kubectl("-n", "default", "get", "configmap", name, check=False).returncode != 0  # dry run: nothing stored
    try:
        with Kube(inv) as kube:
            assert kube.apply([cm]).changed == [f"ConfigMap/default/{name}"]
            version = api(lab, "-n", "default", "get", "configmap", name)["metadata"]["resourceVersion"]
            assert kube.apply([cm]).unchanged == [f"ConfigMap/default/{name}"]
            assert api(lab, "-n", "default", "get", "configmap", name)["metadata"]["resourceVersion"] == version
            assert kube.get_json("configmap", name, namespace="default")["data"] == {"a": "1"}
            assert kube.get_json("configmap", "missing", namespace="default") is None
            assert kube.exists("deployment", "coredns", namespace="kube-system")
            kube.rollout_status("deployment", "coredns", namespace="kube-system")
            changed = {**cm, "data": {"a": "2"}}
            assert kube.apply([changed]).changed == [f"ConfigMap/default/{name}"]
        assert api(lab, "-n", "default", "get", "configmap", name)["data"] == {"a": "2"}
    finally:
        lab.kubectl("-n", "default", "delete", "configmap", name, check=False)


def test_the_mongo_stages_helm_releases_came_from_the_chart_mirror_and_are_unchanged(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Helm path the stages use: real helm on the control plane, the charts from packages.chart_repository.
    The first run installed the mongo stage's releases (its CRD chart and its operator chart) from the lab's chart
    repository; the same chart with the same values is unchanged, in a dry run and for real."""
    from datacloud.inventory import load_inventory
    from datacloud.kube import Kube
    from datacloud.stages import mongo

    _remote_env(lab, env, monkeypatch)
    inv = load_inventory(lab.inventory_path)
    for release in mongo.render(inv).releases:
        with Kube(inv) as kube:
            deployed = kube.helm_release(release.name, release.namespace)
            assert (deployed["chart"], deployed["status"]) == (f"{release.chart}-{release.version}", "deployed")
            assert kube.helm_upgrade(release, timeout_s=120) is False  # same chart, same values: unchanged
        with Kube(inv, dry_run=True) as kube:
            assert kube.helm_upgrade(release) is False
    api(lab, "get", "crd", "perconaservermongodbs.psmdb.percona.com")  # the CRD chart's CRD is served
    served = (lab.state / "charts-http.log").read_text()
    assert "GET /index.yaml" in served and f"GET /psmdb-operator-crds-{release.version}.tgz" in served


# --- 5. teardown, then a new run joins the nodes again ------------------------------------------


def test_teardown_needs_the_cluster_name_then_resets_every_node(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datacloud.errors import UserError
    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    with pytest.raises(UserError, match=f"type the cluster name 'lab{lab.id}'"):
        run_step("teardown", "confirm", conf(lab, confirm="wrong-name"))
    assert lab.nodes[1].path("/etc/kubernetes/kubelet.conf").exists()
    lab.node_exec(lab.nodes[2], "mkdir", "-p", "/var/lib/rook/mon-a")  # what a Ceph cluster leaves on its nodes

    result, out = run_dag(env, "platform_teardown", {"inventory": str(lab.inventory_path), "confirm": f"lab{lab.id}"})
    assert result["state"] == "success", why(out)
    assert set(tis(result, "teardown.reset")) == {"n1", "n2", "n3"}
    for node in lab.nodes:
        assert not node.path("/etc/kubernetes/kubelet.conf").exists()
        assert not node.path("/etc/kubernetes/manifests/kube-apiserver.yaml").exists()
        assert not node.path("/etc/datacloud/cluster-name").exists()
        # emptied, not removed: containerd watches /etc/cni/net.d (a new run must find its new CNI config)
        assert node.path("/etc/cni/net.d").is_dir() and not list(node.path("/etc/cni/net.d").iterdir())
        # the old pod network is gone: a new cluster may lease this node another subnet
        links = lab.node_exec(node, "ip", "-o", "link", "show").stdout
        assert " cni0:" not in links and " flannel.1@" not in links and " flannel.1:" not in links, (node.name, links)
        assert lab.node_exec(node, "test", "-e", "/run/flannel/subnet.env", check=False).returncode != 0, node.name
        active = lab.node_exec(node, "systemctl", "is-active", "kubelet", check=False).stdout.strip()
        assert active != "active" or not node.path("/var/lib/kubelet/config.yaml").exists()
    assert not list(lab.nodes[2].path("/var/lib/rook").iterdir())  # Rook's dataDirHostPath, emptied
    for node in lab.nodes:  # local-path's volumes of the old cluster, emptied
        vols = node.path("/var/lib/datacloud/local-path")
        assert not vols.exists() or not list(vols.iterdir()), (node.name, list(vols.iterdir()))
    got = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "connections", "get", "datacloud_kube", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert got.returncode != 0 or json.loads(got.stdout or "[]") == []


def test_a_new_run_after_teardown_makes_the_cluster_again(lab: Lab, env: dict[str, str]) -> None:
    result, out = run_dag(env, "provision_platform", conf(lab))
    assert result["state"] == "success", why(out)
    assert "kubeadm init (Kubernetes" in out and "kubeadm join " in out
    assert_cluster(lab)
