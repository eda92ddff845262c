"""provision_platform and platform_teardown for real against a 3-node SSH lab.

The DAGs run with ``dag.test()`` in a child process (tests/lab/run_dag.py) with
their own AIRFLOW_HOME; the nodes are real sshd's in network namespaces with
overlay root filesystems; kubeadm/kubectl/helm on them are the recording
doubles of tests/lab/doubles. Tests in this module run in order on one lab:
dry run → full run → second run → failures → teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.helpers.mongos_double import MemberDouble, MongosDouble, ScramServer
from tests.lab.lab import Lab, free_port_on

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the SSH lab needs root (network namespaces, mounts)")

# Files an SSH login itself writes (sshd's login records, sudo's timestamps).
VOLATILE = re.compile(r"^(var/log/|var/lib/sudo/|home/datacloud/\.cache/|root/\.cache/|var/cache/debconf/.*-old$)")


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
    yield lab
    lab.down()
    assert lab.leftovers() == []


class LabSecretPasswords(Mapping):
    """user -> password, read when a client authenticates from the Secrets the mongo stage
    generated into the kubectl double's store (the doubles accept exactly those)."""

    def __init__(self, lab: Lab, users: dict[str, tuple[str, str]]) -> None:
        self.lab, self.users = lab, users  # user -> (Secret name in namespace mongo, key)

    def __getitem__(self, user: str) -> str:
        secret, key = self.users[user]
        obj = self.lab.cluster_state()["objects"].get(f"Secret/mongo/{secret}")
        if obj is None:
            raise KeyError(user)
        return obj["stringData"][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)


@pytest.fixture(scope="module")
def mongos(lab: Lab) -> Iterator[MongosDouble]:
    """The sharded cluster's mongos and shard members cannot run here: mockupdb doubles stand in.

    They listen on the lab bridge's address, which the control plane reaches; the
    kubectl double reports it as the mongos Service's ClusterIP and the members'
    pod IP (addresses.json), so the mongo stage's sharding step runs unchanged:
    an SSH forward from n1, SCRAM-SHA-256 with the generated passwords, the real
    pymongo command flow. mongos must be on 27017 (the stage's port); the members
    are on free ports named in listShards.
    """
    from mockupdb import MockupDB

    def serve(double: MongosDouble | MemberDouble, port: int) -> None:
        double.server = MockupDB(port=port, auto_ismaster=True, max_wire_version=21)
        double.server._address = (lab.host_address, port)  # mockupdb binds localhost otherwise
        double.server.run()
        double.server.autoresponds(double._handle)

    monitor = LabSecretPasswords(lab, {"clusterMonitor": ("datacloud-mongo-users", "MONGODB_CLUSTER_MONITOR_PASSWORD")})
    members = []
    for i in range(2):  # components.mongo.shards of the lab inventory (the default)
        m = MemberDouble(f"rs{i}")
        serve(m, free_port_on(lab.host_address))
        m.reset()
        m.scram = ScramServer(monitor)
        members.append(m)
    double = MongosDouble()
    double.reset(
        shards=[
            {
                "_id": m.set_name,
                "host": f"{m.set_name}/datacloud-mongo-{m.set_name}-0.datacloud-mongo-{m.set_name}.mongo.svc.cluster.local:"
                f"{m.server.address[1]}",
                "state": 1,
            }
            for m in members
        ]
    )
    serve(double, 27017)
    double.scram = ScramServer(LabSecretPasswords(lab, {"datacloud-admin": ("datacloud-mongo-admin", "password")}))
    (lab.shared / "addresses.json").write_text(json.dumps({"mongos": lab.host_address, "pods": lab.host_address}))
    try:
        yield double
    finally:
        double.stop()
        for m in members:
            m.stop()


@pytest.fixture(scope="module")
def env(lab: Lab, workdir: Path, mongos: MongosDouble) -> dict[str, str]:
    home = workdir / "airflow"
    home.mkdir()
    dags = home / "dags"  # only the DAGs under test: dag.test() parses the whole folder
    dags.mkdir()
    for name in ("provision_platform.py", "platform_teardown.py"):
        (dags / name).symlink_to(ROOT / "dags" / name)
    e = {
        **os.environ,
        **lab.env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'include'}",
        # the mongo stage stores datacloud_mongo with the `airflow` CLI of the worker's environment
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    e.pop("AIRFLOW_CONN_DATACLOUD_KUBE", None)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=e, check=True, capture_output=True)
    # the administrator's one-time setup step (./dev up does it through the REST API)
    subprocess.run([airflow, "pools", "set", "datacloud_nodes", "10", "datacloud per-node tasks"], env=e, check=True, capture_output=True)
    return e


def run_dag(env: dict[str, str], dag_id: str, conf: dict) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_dag.py"), dag_id, json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    out = proc.stdout + proc.stderr
    # DATACLOUD_LAB_LOG_DIR keeps the run logs after the test (the work folder is removed)
    logs = Path(os.environ.get("DATACLOUD_LAB_LOG_DIR") or Path(env["AIRFLOW_HOME"]) / "runs")
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{time.time():.0f}-{dag_id}.log").write_text(out)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"run_dag.py printed no result:\n{out[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :]), out


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


def op(call: dict) -> str:
    """One kube-tool call in a few words: 'apply Kind/ns/name', 'helm RELEASE', 'rollout kind/name',
    'wait kind name', 'delete kinds name', 'exec TARGET', 'raw PATH', 'get kind name'."""
    argv = call["argv"][2:] if call["argv"][:1] == ["--kubeconfig"] else call["argv"]
    if not argv:
        return call["tool"]
    words = [w for w in argv if not w.startswith("-")]
    if call["tool"] == "helm":
        return f"helm {argv[2]}" if argv[:2] == ["upgrade", "--install"] else f"helm-{argv[0]}"
    if call["tool"] != "kubectl":
        return f"{call['tool']} {argv[0]}"
    if argv[0] == "apply":
        d = json.loads(call["stdin"])
        return f"apply {d['kind']}/{d['metadata'].get('namespace', '')}/{d['metadata']['name']}"
    if argv[0] == "rollout":
        return f"rollout {words[2]}"
    if argv[0] == "exec":
        head = argv[: argv.index("--")] if "--" in argv else argv
        skip = {i + 1 for i, w in enumerate(head) if w in ("--namespace", "-n", "--container", "-c")}
        target = [w for i, w in enumerate(head[1:], 1) if i not in skip and not w.startswith("-")]
        return f"exec {target[0] if target else ''}"
    if argv[0] == "get" and "--raw" in argv:
        return "raw " + argv[argv.index("--raw") + 1]
    return " ".join(words[:3])


def in_order(ops: list[str], *patterns: str) -> list[int]:
    """Indices of the first op matching each regex, each after the one before; fails naming the first missing."""
    at, found = -1, []
    for pattern in patterns:
        i = next((i for i in range(at + 1, len(ops)) if re.fullmatch(pattern, ops[i])), None)
        assert i is not None, f"no {pattern!r} after {ops[at] if at >= 0 else 'the start'} in {ops}"
        found.append(i)
        at = i
    return found


def conf(lab: Lab, **kw) -> dict:
    return {"inventory": str(lab.inventory_path), **kw}


# --- 1. dry run ------------------------------------------------------------------


def test_dry_run_changes_nothing(lab: Lab, env: dict[str, str]) -> None:
    before = snapshot(lab)
    result, out = run_dag(env, "provision_platform", conf(lab, dry_run=True))
    assert result["state"] == "success", out[-4000:]
    assert changed_files(before, snapshot(lab)) == {}  # nothing written inside any node
    assert lab.calls() == []  # no kube tool was even installed, let alone called
    assert "would install kubelet=1.34.2-1.1 kubeadm=1.34.2-1.1 kubectl=1.34.2-1.1" in out
    assert "would comment out swap entries in /etc/fstab" in out
    for stage_step in (
        "storage | apply",
        "mongo | apply",
        "mongo | sharding",
        "spark | apply",
        "jupyter | apply",
        "monitoring | apply",
    ):
        assert f"{stage_step} | would change" in out, stage_step  # every later stage plans, none fails before the cluster exists
    assert "would be written once the mongo stage created its monitor user" in out
    for node in lab.nodes:
        assert not node.path("/etc/containerd/config.toml").exists()
        assert "\n/swapfile" in node.path("/etc/fstab").read_text()


# --- 2. full run -------------------------------------------------------------------


def test_full_run_prepares_nodes_and_drives_the_tools(lab: Lab, env: dict[str, str], mongos: MongosDouble) -> None:
    result, out = run_dag(env, "provision_platform", conf(lab))
    assert result["state"] == "success", out[-4000:]
    assert set(tis(result, "node_prep.prepare")) == {"n1", "n2", "n3"}  # one grid entry per node
    assert set(tis(result, "kubernetes.join")) == {"n2", "n3"}

    for node in lab.nodes:
        fstab = node.path("/etc/fstab").read_text()
        assert re.search(r"^# /swapfile\s+none\s+swap", fstab, re.M)
        assert not re.search(r"^/swapfile", fstab, re.M)
        assert node.path("/etc/modules-load.d/datacloud-k8s.conf").read_text() == "overlay\nbr_netfilter\n"
        sysctl = node.path("/etc/sysctl.d/99-datacloud-k8s.conf").read_text()
        assert "net.bridge.bridge-nf-call-iptables = 1" in sysctl
        assert "net.ipv4.ip_forward = 1" in sysctl
        containerd = node.path("/etc/containerd/config.toml").read_text()
        assert re.search(r"^\s*SystemdCgroup = true$", containerd, re.M)
        assert 'sandbox_image = "registry.k8s.io/pause:3.10.1"' in containerd
        status = node.path("/var/lib/dpkg/status").read_text()
        for pkg in ("kubelet", "kubeadm", "kubectl"):
            assert re.search(rf"^Package: {pkg}\nStatus: hold ok installed\n(?:.+\n)*?Version: 1\.34\.2-1\.1$", status, re.M), pkg
        assert node.path("/etc/datacloud/cluster-name").read_text().strip() == f"lab{lab.id}"
        assert (
            node.path("/etc/apt/sources.list.d/datacloud.list").read_text().strip()
            == f"deb [trusted=yes] {lab.repository_url} ./"
        )
    # the gateway: NAT on n1, default route through n1 elsewhere
    assert "masquerade" in lab.nodes[0].path("/etc/datacloud/gateway.nft").read_text()
    assert lab.nodes[1].path("/etc/systemd/system/datacloud-route.service").exists()

    calls = lab.calls()
    assert {c["uid"] for c in calls} == {0}  # everything through sudo
    kubeadm = [c for c in calls if c["tool"] == "kubeadm"]
    assert kubeadm[0]["node"] == "n1"
    assert kubeadm[0]["argv"] == [
        "init",
        "--config",
        "/etc/datacloud/kubeadm-config.yaml",
        "--skip-token-print",
        "--skip-certificate-key-print",
    ]
    for worker in ("n2", "n3"):
        token = next(
            i
            for i, c in enumerate(calls)
            if c["tool"] == "kubeadm" and c["argv"][:2] == ["token", "create"] and f"datacloud join of {worker}" in c["argv"]
        )
        assert calls[token]["node"] == "n1"
        assert calls[token]["argv"][2:4] == ["--ttl", "15m"]
        join = next(i for i, c in enumerate(calls) if c["tool"] == "kubeadm" and c["argv"][0] == "join" and c["node"] == worker)
        assert token < join
        assert calls[join]["argv"] == [
            "join",
            "--config",
            "/etc/datacloud/kubeadm-join.yaml",
        ]  # the token is not on a command line
        assert not lab.nodes[int(worker[1]) - 1].path("/etc/datacloud/kubeadm-join.yaml").exists()
    helm = [i for i, c in enumerate(calls) if c["tool"] == "helm" and c["argv"][2:4] == ["upgrade", "--install"]]
    assert [calls[i]["argv"][4] for i in helm] == [
        "tigera-operator",
        "psmdb-operator-crds",
        "psmdb-operator",
        "spark-operator",
        "jupyterhub",
        "kube-prometheus-stack",
        "headlamp",
    ]  # each release once, the CNI first
    argv = calls[helm[0]]["argv"]
    assert argv[4:6] == ["tigera-operator", "tigera-operator"]
    assert argv[argv.index("--version") + 1] == "v3.31.2"
    assert json.loads(calls[helm[0]]["stdin"])["installation"]["calicoNetwork"]["ipPools"][0]["cidr"] == "10.244.0.0/16"
    last_join = max(i for i, c in enumerate(calls) if c["tool"] == "kubeadm" and c["argv"][0] == "join")
    wait_nodes = next(i for i, c in enumerate(calls) if c["tool"] == "kubectl" and "wait" in c["argv"] and "node" in c["argv"])
    assert last_join < helm[0] < wait_nodes

    config = lab.cluster_state()["config"]
    assert 'kubernetesVersion: "v1.34.2"' in config
    assert f'advertiseAddress: "{lab.nodes[0].address}"' in config
    assert 'podSubnet: "10.244.0.0/16"' in config
    assert 'serviceSubnet: "10.96.0.0/12"' in config
    assert "cgroupDriver: systemd" in config

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
    assert "CoreDNS: 2/2 ready" in out

    # the later stages, in platform order, each in the order the real tools need:
    # namespaces first, a chart before the objects of its CRDs, a rollout before what needs it
    ops = [op(c) for c in calls]
    storage = in_order(
        ops,
        r"apply Namespace//local-path-storage",
        r"apply Deployment/local-path-storage/local-path-provisioner",
        r"apply StorageClass//local-path",
        r"rollout deployment/local-path-provisioner",
        r"apply PersistentVolumeClaim/default/datacloud-probe-rwo-[0-9a-f]{8}",
        r"apply Pod/default/datacloud-probe-rwo-[0-9a-f]{8}",
        r"wait pod datacloud-probe-rwo-[0-9a-f]{8}",
        r"get persistentvolumeclaim datacloud-probe-rwo-[0-9a-f]{8}",
        r"delete pod,persistentvolumeclaim datacloud-probe-rwo-[0-9a-f]{8}",
    )
    mongo = in_order(
        ops,
        r"apply Namespace//mongo",
        r"apply Secret/mongo/datacloud-mongo-keyfile",
        r"apply Secret/mongo/datacloud-mongo-admin",
        r"helm psmdb-operator-crds",
        r"helm psmdb-operator",
        r"rollout deployment/psmdb-operator",
        r"apply PerconaServerMongoDB/mongo/datacloud-mongo",
        r"get perconaservermongodb datacloud-mongo",
        r"get service datacloud-mongo-mongos",
    )
    spark = in_order(
        ops,
        r"apply Namespace//spark-jobs",
        r"apply PersistentVolumeClaim/spark-jobs/spark-events",
        r"helm spark-operator",
        r"apply ScheduledSparkApplication/spark-jobs/.+",
        r"rollout deployment/spark-history-server",
        r"apply SparkApplication/spark-jobs/datacloud-verify-.+",
        r"get sparkapplication datacloud-verify-.+",
        r"raw /api/v1/namespaces/spark-jobs/services/http:spark-history-server:18080/proxy/api/v1/applications",
        r"delete sparkapplication datacloud-verify-.+",
    )
    jupyter = in_order(
        ops,
        r"apply Namespace//jupyter",
        r"apply Secret/jupyter/notebook-mongo",
        r"helm jupyterhub",
        r"rollout deployment/hub",
        r"rollout deployment/proxy",
        r"apply Secret/jupyter/jupyterhub-admin",
        r"exec deploy/hub",
        r"exec deploy/hub",
    )
    monitoring = in_order(
        ops,
        r"apply Namespace//monitoring",
        r"apply Secret/monitoring/mongodb-exporter",
        r"helm kube-prometheus-stack",
        r"apply Deployment/monitoring/mongodb-exporter-mongos",
        r"apply ServiceMonitor/monitoring/mongodb-exporter",
        r"apply PrometheusRule/monitoring/.+",
        r"helm headlamp",
        r"rollout deployment/mongodb-exporter-rs1",
        r"exec prometheus-kube-prometheus-stack-prometheus-0",
    )
    assert storage[-1] < mongo[0] and mongo[-1] < spark[0] and spark[-1] < jupyter[0] and jupyter[-1] < monitoring[0]
    assert not [o for o in ops if "rook-ceph" in o or "CephCluster" in o]  # no Ceph disks in the lab: local-path
    objects = lab.cluster_state()["objects"]
    assert not [k for k in objects if "datacloud-probe-" in k or "datacloud-verify-" in k]  # the proofs cleaned up
    # the sharding step through mongos (the mockupdb double, over an SSH forward from n1)
    writes = [(c.name, c.doc.get(c.name)) for c in mongos.writes()]
    assert writes == [
        ("enableSharding", "datacloud"),
        ("shardCollection", "datacloud.flights"),
        ("shardCollection", "datacloud.daily_delay_stats"),
        ("createIndexes", "flights"),
        ("createIndexes", "flights"),
    ]
    assert "mongo | sharding | changed 5 thing(s)" in out
    mongo_conn = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "connections", "get", "datacloud_mongo", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    stored = json.loads(mongo_conn.stdout)[0]
    app_password = objects["Secret/mongo/datacloud-mongo-app"]["stringData"]["password"]
    assert (stored["login"], stored["password"], stored["schema"]) == ("datacloud", app_password, "datacloud")
    assert app_password not in out


# --- 3. second run, with a node's sshd killed in the middle of its task ----------------------


def test_second_run_unchanged_everywhere_even_after_sshd_killed_mid_task(
    lab: Lab, env: dict[str, str], mongos: MongosDouble
) -> None:
    before, calls_before = snapshot(lab), len(lab.calls())
    n2 = lab.nodes[1]
    killed = threading.Event()

    def killer() -> None:
        """As soon as node_prep's script runs on n2, kill n2's sshd and all it started; restart it 1 s later."""
        deadline = time.monotonic() + 240
        ns = os.readlink(f"/proc/{n2.root_pid()}/ns/pid")
        while time.monotonic() < deadline:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    if (
                        os.readlink(f"/proc/{pid}/ns/pid") != ns
                        or b"node-prep.sh" not in Path(f"/proc/{pid}/cmdline").read_bytes()
                    ):
                        continue
                except OSError:
                    continue
                lab.stop_node(n2)
                killed.set()
                time.sleep(1)
                lab.start_node(n2)
                return
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result, out = run_dag(env, "provision_platform", conf(lab))
    t.join(timeout=30)
    assert killed.is_set(), "node_prep never ran on n2"
    assert result["state"] == "success", out[-4000:]
    prep = tis(result, "node_prep.prepare")
    assert prep["n2"]["try_number"] >= 2
    assert prep["n1"]["try_number"] == 1
    assert re.search(r"n2 \([0-9.]+\): SSH connection (lost|failed)", out)

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
        "network | install",
        "storage | apply",
        "storage | prove",
        "mongo | apply",
        "mongo | ready",
        "mongo | sharding",
        "mongo | connection",
        "spark | apply",
        "spark | verify",
        "jupyter | apply",
        "jupyter | admin",
        "jupyter | verify",
        "monitoring | apply",
        "monitoring | verify",
        "verify | summary",
    ):
        assert f"{stage_step} | unchanged" in out, stage_step
    new = lab.calls()[calls_before:]

    def proof(c: dict) -> bool:
        """The per-run proofs: a storage probe and a Spark application, created and deleted by the run."""
        return "apply" in c["argv"] and re.search(r'"name": "datacloud-(probe-rwo-|verify-)', c["stdin"]) is not None

    mutating = [
        c
        for c in new
        if (c["tool"], c["argv"][0] if c["argv"] else "") in {("kubeadm", "init"), ("kubeadm", "join")}
        or "upgrade" in c["argv"]
        or ("apply" in c["argv"] and not proof(c))
        or ("token" in c["argv"] and "create" in c["argv"])
    ]
    assert mutating == []
    ops = [op(c) for c in new]
    assert len([o for o in ops if o.startswith("apply ")]) == 3  # the probe's claim and pod, the Spark application
    in_order(ops, r"apply PersistentVolumeClaim/default/datacloud-probe-rwo-.+", r"delete pod,persistentvolumeclaim .+")
    in_order(ops, r"apply SparkApplication/spark-jobs/datacloud-verify-.+", r"delete sparkapplication .+")
    assert not [k for k in lab.cluster_state()["objects"] if "datacloud-probe-" in k or "datacloud-verify-" in k]
    assert [c.name for c in mongos.writes()][5:] == []  # sharding and indexes exist: nothing sent that changes anything


# --- 4. failures that the administrator fixes: no retries, one sentence --------------------------


def _remote_env(lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**lab.env(), "AIRFLOW_HOME": env["AIRFLOW_HOME"]}.items():
        monkeypatch.setenv(key, value)


def test_changed_host_key_fails_hard_naming_the_node(lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
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
    from airflow.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException), fail_fast():
        run_step("node_prep", "prepare", conf(lab), node="n3")
    # the administrator's fix: forget the old key; preflight records the new one
    text = store.path.read_text()
    store.path.write_text("".join(ln + "\n" for ln in text.splitlines() if not ln.startswith(n3.address + " ")))
    assert run_step("preflight", "gather", conf(lab), node="n3")["facts"]["hostname"] == "n3"
    assert fingerprint(store.get(n3.address, 22)) == offered


def test_unreachable_node_fails_preflight_with_one_sentence(
    lab: Lab, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from datacloud.remote import UnreachableError
    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    inv = lab.inventory()
    inv["nodes"].append({"name": "n9", "address": f"10.77.{lab.id}.99", "roles": ["worker"], "cpu": 2, "memory_gb": 2})
    path = tmp_path / "inventory.yaml"
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


def test_ceph_storage_stage_drives_rook_and_proves_both_classes(
    lab: Lab, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ceph path of the storage stage, step by step on the lab's cluster.

    The lab nodes have no spare disks (preflight refuses a missing device), so the
    DAG runs above use local-path; here only the storage stage's steps run, with an
    inventory that gives every node a Ceph disk.
    """
    import yaml

    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    inv = lab.inventory()
    for node in inv["nodes"]:
        node["memory_gb"] = 16
        node["disks"] = [{"device": "/dev/vdb", "size_gb": 200, "use": "ceph"}]
    inv["components"]["mongo"]["shards"] = 1
    path = tmp_path / "inventory-ceph.yaml"
    path.write_text(yaml.safe_dump(inv))
    params = {"inventory": str(path)}
    mark = len(lab.calls())
    assert run_step("storage", "apply", params)["backend"] == "rook-ceph"
    assert run_step("storage", "health", params)["health"] == "HEALTH_OK"
    assert run_step("storage", "prove", params)["proven"] == ["rook-ceph-block", "rook-cephfs"]
    ops = [op(c) for c in lab.calls()[mark:]]
    in_order(
        ops,
        r"apply Namespace//rook-ceph",
        r"helm rook-ceph",
        r"rollout deployment/rook-ceph-operator",
        r"apply CephCluster/rook-ceph/rook-ceph",
        r"apply CephBlockPool/rook-ceph/replicapool",
        r"apply StorageClass//rook-ceph-block",
        r"apply StorageClass//rook-cephfs",
        r"get cephcluster rook-ceph",
        r"apply PersistentVolumeClaim/default/datacloud-probe-rwo-[0-9a-f]{8}",
        r"wait pod datacloud-probe-rwo-[0-9a-f]{8}",
        r"delete pod,persistentvolumeclaim datacloud-probe-rwo-[0-9a-f]{8}",
        r"apply PersistentVolumeClaim/default/datacloud-probe-rwx-[0-9a-f]{8}",
        r"wait pod datacloud-probe-rwx-[0-9a-f]{8}",
        r"delete pod,persistentvolumeclaim datacloud-probe-rwx-[0-9a-f]{8}",
    )
    claim = json.loads(
        next(
            c["stdin"] for c in lab.calls()[mark:] if op(c).startswith("apply PersistentVolumeClaim/default/datacloud-probe-rwx")
        )
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    mark = len(lab.calls())
    assert run_step("storage", "apply", params)["changes"] == []  # converged: nothing applied, no chart upgraded
    assert not [c for c in lab.calls()[mark:] if "apply" in c["argv"] or "upgrade" in c["argv"]]


# --- 5. teardown -------------------------------------------------------------------------


def test_kube_apply_reports_changed_then_unchanged_and_dry_run_applies_nothing(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API the later stages use (kubectl runs on the control plane over SSH)."""
    from datacloud.inventory import load_inventory
    from datacloud.kube import Kube

    _remote_env(lab, env, monkeypatch)
    mark = len(lab.calls())  # the lab is shared by the module: count only this test's calls
    inv = load_inventory(lab.inventory_path)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": "default"}, "data": {"a": "1"}}
    with Kube(inv, dry_run=True) as kube:
        if not kube.available():
            pytest.skip("the cluster was torn down by an earlier test")
        assert kube.apply([cm]).changed == ["ConfigMap/default/probe"]
    assert "ConfigMap/default/probe" not in lab.cluster_state()["objects"]  # dry run: nothing stored
    with Kube(inv) as kube:
        assert kube.apply([cm]).changed == ["ConfigMap/default/probe"]
        assert kube.apply([cm]).unchanged == ["ConfigMap/default/probe"]
        assert kube.get_json("configmap", "probe", namespace="default")["data"] == {"a": "1"}
        assert kube.get_json("configmap", "missing", namespace="default") is None
        assert kube.exists("deployment", "coredns", namespace="kube-system")
        kube.rollout_status("deployment", "coredns", namespace="kube-system")
    applies = [c for c in lab.calls()[mark:] if c["tool"] == "kubectl" and "apply" in c["argv"]]
    assert len(applies) == 1
    assert applies[0]["argv"][2:] == ["apply", "--server-side", "--field-manager", "datacloud", "--force-conflicts", "-f", "-"]


def test_teardown_needs_the_cluster_name_then_cleans_every_node(
    lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datacloud.errors import UserError
    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    with pytest.raises(UserError, match=f"type the cluster name 'lab{lab.id}'"):
        run_step("teardown", "confirm", conf(lab, confirm="wrong-name"))
    assert lab.nodes[1].path("/etc/kubernetes/kubelet.conf").exists()

    result, out = run_dag(env, "platform_teardown", conf(lab, confirm=f"lab{lab.id}"))
    assert result["state"] == "success", out[-4000:]
    assert set(tis(result, "teardown.reset")) == {"n1", "n2", "n3"}
    for node in lab.nodes:
        assert not node.path("/etc/kubernetes/kubelet.conf").exists()
        assert not node.path("/etc/datacloud/cluster-name").exists()
        assert any(c["tool"] == "kubeadm" and c["argv"][:2] == ["reset", "-f"] and c["node"] == node.name for c in lab.calls())
    got = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "connections", "get", "datacloud_kube", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert got.returncode != 0 or json.loads(got.stdout or "[]") == []


def test_join_survives_a_transient_failure(lab: Lab, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """After teardown: init again, then a join whose first kubeadm call fails like a refused connection."""
    from datacloud.errors import TransientError
    from datacloud.stages._common import run_step

    _remote_env(lab, env, monkeypatch)
    run_step("kubernetes", "init", conf(lab))
    lab.inject_fault("kubeadm", "join", "n2", times=1)
    with pytest.raises(TransientError, match="kubeadm join of n2 failed"):
        run_step("kubernetes", "join", conf(lab), node="n2")
    assert not lab.nodes[1].path("/etc/kubernetes/kubelet.conf").exists()
    assert run_step("kubernetes", "join", conf(lab), node="n2")["changes"][0].startswith("kubeadm join ")  # the retry, new token
    assert run_step("kubernetes", "join", conf(lab), node="n2")["changes"] == []  # already a member
    tokens = [
        c
        for c in lab.calls()
        if c["tool"] == "kubeadm" and c["argv"][:2] == ["token", "create"] and "datacloud join of n2" in c["argv"]
    ]
    assert len(tokens) >= 3  # one fresh token per join attempt (the first run's, the failed one, the retry)
