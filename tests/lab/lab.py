"""The SSH lab: N real SSH nodes on this machine, for tests and for trying the DAG by hand.

Each node is

* a network namespace ``dclab<I>-n<k>`` with a veth pair to the lab's bridge
  ``dclab<I>`` on the host (``10.77.<I>.1/24``); the node is ``10.77.<I>.<10+k>``;
* an isolated root filesystem: the cached Debian bookworm tree built by
  ``include/scripts/setup.d/lab-rootfs.sh`` (read-only lower layer) under a
  per-node overlay whose upper directory holds everything the node changes;
* an ``sshd`` with its own host key, started as
  ``ip netns exec NS unshare --mount --uts --pid --fork chroot ROOT sshd -D``
  (through ``node-init.sh``, which mounts the overlay inside the node's own
  mount namespace, so nothing leaks onto the host).

Lab nodes have no route to any registry. What node_prep installs comes from a
local apt repository the lab serves over HTTP on the bridge address: the
Debian packages downloaded by the setup step, plus the recording doubles of
kubeadm/kubectl/kubelet/helm from ``tests/lab/doubles/``, packaged as ``.deb``
files with the pinned versions so node_prep installs them through apt exactly
as in production. The doubles of all nodes share ``/var/lib/double-cluster``
(their stand-in for the API server); the product code never sees it.

``./dev lab up N`` / ``./dev lab down`` (state in ``<data dir>/lab``); tests use
:class:`Lab` directly with their own state folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "include"))

from datacloud import config  # noqa: E402

HERE = Path(__file__).resolve().parent
DOUBLES = HERE / "doubles"
SETUP_STEP = ROOT / "include" / "scripts" / "setup.d" / "lab-rootfs.sh"
SUITE = "bookworm"
PREFIX = "dclab"
LOCK_DIR = Path("/run/datacloud-lab")
USER = "datacloud"
UID = 1000


def sh(*argv: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, capture_output=True) if quiet else subprocess.run(argv, check=check)


def rootfs_dir() -> Path:
    """The cached root filesystem (built by the setup step when missing)."""
    key = hashlib.sha256(SETUP_STEP.read_bytes()).hexdigest()[:12]
    dest = config.cache_dir() / "lab" / f"{SUITE}-{key}"
    if not (dest / ".done").exists():
        print(f"lab | building the node root filesystem once ({dest}); this takes a few minutes", file=sys.stderr)
        env = {**os.environ, "CACHE": str(config.cache_dir()), "ROOT": str(ROOT)}
        subprocess.run(["bash", str(SETUP_STEP)], check=True, env=env)
    return dest


def _versions() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "manifests" / "versions.yaml").read_text())


def double_packages() -> list[tuple[str, str, str]]:
    """(package, version, description) of the doubles, at the versions node_prep pins."""
    from datacloud.stages.node_prep import package_versions

    v = package_versions()
    return [
        ("kubeadm", v["kubeadm"], "recording double of kubeadm for the datacloud SSH lab"),
        ("kubectl", v["kubectl"], "recording double of kubectl for the datacloud SSH lab"),
        ("kubelet", v["kubelet"], "recording double of kubelet for the datacloud SSH lab"),
        ("helm", v["helm"], "recording double of helm for the datacloud SSH lab"),
    ]


def build_repo() -> Path:
    """A flat apt repository: the pool of the root filesystem plus the doubles (cached)."""
    pool = rootfs_dir() / "pool"
    pkgs = double_packages()
    h = hashlib.sha256()
    for f in sorted(DOUBLES.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    h.update(json.dumps(pkgs).encode() + str(pool).encode())
    repo = config.cache_dir() / "lab" / f"repo-{h.hexdigest()[:12]}"
    if (repo / "Packages.gz").exists():
        return repo
    tmp = repo.with_name(repo.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in pool.glob("*.deb"):
        try:
            os.link(deb, tmp / deb.name)
        except OSError:
            shutil.copy2(deb, tmp / deb.name)
    build = tmp / ".build"
    # the shared implementation, then one package per tool (a symlink to it)
    _deb(
        build,
        tmp,
        "kube-doubles",
        "1.0",
        "recording doubles of kubeadm, kubectl, kubelet and helm (datacloud SSH lab)",
        {"usr/lib/kube-doubles/double.py": (DOUBLES / "double.py").read_bytes()},
        depends="python3",
    )
    for name, version, desc in pkgs:
        _deb(
            build,
            tmp,
            name,
            version,
            desc,
            {},
            depends="kube-doubles",
            links={f"usr/bin/{name}": "/usr/lib/kube-doubles/double.py"},
        )
    shutil.rmtree(build)
    out = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=tmp, check=True, capture_output=True)
    (tmp / "Packages").write_bytes(out.stdout)
    subprocess.run(["gzip", "-k", "-9", "Packages"], cwd=tmp, check=True)
    _release(tmp)
    for old in repo.parent.glob("repo-*"):
        if old != repo and ".tmp" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    tmp.rename(repo)
    return repo


def _release(repo: Path) -> None:
    """A Release file (unsigned: the lab inventory marks the repository trusted)."""
    lines = [
        "Origin: datacloud-lab",
        "Label: datacloud-lab",
        "Suite: lab",
        "Codename: lab",
        "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()),
        "Architectures: amd64 all",
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    (repo / "Release").write_text("\n".join(lines) + "\n")


def _deb(
    build: Path,
    out: Path,
    name: str,
    version: str,
    desc: str,
    files: dict[str, bytes],
    depends: str = "",
    links: dict[str, str] | None = None,
) -> None:
    root = build / name
    (root / "DEBIAN").mkdir(parents=True)
    control = f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: datacloud lab <lab@localhost>\n"
    if depends:
        control += f"Depends: {depends}\n"
    control += f"Section: admin\nPriority: optional\nDescription: {desc}\n"
    (root / "DEBIAN" / "control").write_text(control)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o755)
    for rel, target in (links or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out / f"{name}_{version}_all.deb")],
        check=True,
        capture_output=True,
    )


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _kill_group(pid: int, start: str | None, timeout: float = 10) -> None:
    if start is None or _start_time(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if _start_time(pid) != start:
            return
        time.sleep(0.05)


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_port(address: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{address}:{port} did not open within {timeout:.0f}s")


@dataclass
class LabNode:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    dir: Path
    pid: int = 0
    start: str | None = None

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    def root_pid(self) -> int | None:
        """PID (on the host) of the node's PID 1 (its sshd)."""
        if not self.pid or _start_time(self.pid) != self.start:
            return None
        # ip netns exec execs unshare; unshare forks PID 1 of the node
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def path(self, inside: str) -> Path:
        """A path inside the node's merged root filesystem, readable from the host."""
        pid = self.root_pid()
        if pid is None:
            raise RuntimeError(f"lab node {self.name} is not running")
        return Path(f"/proc/{pid}/root") / inside.lstrip("/")


class Lab:
    """N SSH nodes. ``with Lab(3, state) as lab:`` or ``up()``/``down()``."""

    def __init__(self, n: int, state_dir: Path, *, with_gateway: bool = True) -> None:
        if not 1 <= n <= 20:
            raise ValueError("a lab has 1 to 20 nodes")
        self.n = n
        self.state = Path(state_dir)
        self.with_gateway = with_gateway
        self.id = 0
        self.nodes: list[LabNode] = []
        self.http_pid = 0
        self.http_start: str | None = None
        self.repo_port = 0

    # -- names --
    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.id}"

    @property
    def host_address(self) -> str:
        return f"10.77.{self.id}.1"

    @property
    def subnet(self) -> str:
        return f"10.77.{self.id}.0/24"

    @property
    def shared(self) -> Path:
        return self.state / "double-cluster"

    @property
    def key_file(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def inventory_path(self) -> Path:
        return self.state / "inventory.yaml"

    @property
    def data_dir(self) -> Path:
        """DATACLOUD_DATA_DIR for runs against this lab (holds the pinned host keys)."""
        return self.state / "data"

    # -- lifecycle --
    def _reserve_id(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for i in range(1, 250):
            lock = LOCK_DIR / str(i)
            try:
                lock.mkdir()
            except FileExistsError:
                owner = (lock / "owner").read_text() if (lock / "owner").exists() else ""
                if owner and Path(owner).exists():
                    continue
                if not owner and time.time() - lock.stat().st_mtime < 60:
                    continue  # being created right now
                shutil.rmtree(lock, ignore_errors=True)  # a lab whose state is gone
                try:
                    lock.mkdir()
                except FileExistsError:
                    continue
            if Path(f"/sys/class/net/{PREFIX}{i}").exists():
                continue
            (lock / "owner").write_text(str(self.state / "lab.json"))
            self.id = i
            return
        raise RuntimeError("no free lab id")

    def save(self) -> None:
        data = {
            "id": self.id,
            "n": self.n,
            "http_pid": self.http_pid,
            "http_start": self.http_start,
            "repo_port": self.repo_port,
            "nodes": [{"name": x.name, "index": x.index, "pid": x.pid, "start": x.start} for x in self.nodes],
        }
        (self.state / "lab.json").write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, state_dir: Path) -> Lab:
        data = json.loads((Path(state_dir) / "lab.json").read_text())
        lab = cls(data["n"], state_dir)
        lab.id = data["id"]
        lab.http_pid, lab.http_start, lab.repo_port = data["http_pid"], data["http_start"], data["repo_port"]
        lab.nodes = [lab._node(x["index"]) for x in data["nodes"]]
        for node, x in zip(lab.nodes, data["nodes"], strict=True):
            node.pid, node.start = x["pid"], x["start"]
        return lab

    def _node(self, k: int) -> LabNode:
        return LabNode(
            name=f"n{k}",
            index=k,
            address=f"10.77.{self.id}.{10 + k}",
            netns=f"{PREFIX}{self.id}-n{k}",
            veth=f"{PREFIX}{self.id}v{k}",
            dir=self.state / "nodes" / f"n{k}",
        )

    def up(self) -> Lab:
        t0 = time.monotonic()
        rootfs = rootfs_dir() / "rootfs"
        repo = build_repo()
        self.state.mkdir(parents=True, exist_ok=True)
        self._reserve_id()
        self.nodes = [self._node(k) for k in range(1, self.n + 1)]
        self.save()
        try:
            if not self.key_file.exists():
                sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "datacloud-lab", "-f", str(self.key_file))
            self.shared.mkdir(exist_ok=True)
            self.shared.chmod(0o1777)
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            self._start_repo(repo)
            for node in self.nodes:
                self._make_node(node)
                self.start_node(node, rootfs, wait=False)
                self.save()
            for node in self.nodes:
                wait_port(node.address, 22)
            self.write_inventory()
        except BaseException:
            self.down()
            raise
        self.save()
        self.elapsed = time.monotonic() - t0
        return self

    def _start_repo(self, repo: Path) -> None:
        self.repo_port = free_port_on(self.host_address)
        log = open(self.state / "repo-http.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.repo_port), "--bind", self.host_address, "--directory", str(repo)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.http_pid, self.http_start = proc.pid, _start_time(proc.pid)
        wait_port(self.host_address, self.repo_port)

    @property
    def repository_url(self) -> str:
        return f"http://{self.host_address}:{self.repo_port}"

    def _make_node(self, node: LabNode) -> None:
        rootfs = rootfs_dir() / "rootfs"
        for d in ("upper", "work", "merged"):
            (node.dir / d).mkdir(parents=True, exist_ok=True)
        up = node.upper
        # identity: host key, hostname, hosts
        (up / "etc/ssh").mkdir(parents=True, exist_ok=True)
        if not (up / "etc/ssh/ssh_host_ed25519_key").exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name, "-f", str(up / "etc/ssh/ssh_host_ed25519_key"))
        (up / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
        (up / "etc/ssh/sshd_config.d/lab.conf").write_text(
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nPermitRootLogin prohibit-password\nMaxStartups 100:30:200\nUseDNS no\n"
        )
        (up / "etc/hostname").write_text(node.name + "\n")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{x.address} {x.name}\n" for x in self.nodes)
        (up / "etc/hosts").write_text(hosts)
        # an administrator account with passwordless sudo, as on the thesis machines
        for f, line in (
            ("passwd", f"{USER}:x:{UID}:{UID}:datacloud admin:/home/{USER}:/bin/bash\n"),
            ("group", f"{USER}:x:{UID}:\n"),
            ("shadow", f"{USER}:*:19000:0:99999:7:::\n"),
        ):
            text = (rootfs / "etc" / f).read_text()
            if f"\n{USER}:" not in text:
                text += line
            (up / "etc" / f).write_text(text)
            (up / "etc" / f).chmod(0o640 if f == "shadow" else 0o644)
        (up / "etc/sudoers.d").mkdir(exist_ok=True)
        (up / "etc/sudoers.d/datacloud").write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
        (up / "etc/sudoers.d/datacloud").chmod(0o440)
        ssh_dir = up / "home" / USER / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(str(self.key_file) + ".pub").read_text())
        for p in (up / "home" / USER, ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, UID, UID)
        ssh_dir.chmod(0o700)
        (ssh_dir / "authorized_keys").chmod(0o600)
        # the machines had swap configured (node_prep turns it off in fstab)
        (up / "etc/fstab").write_text(
            "# /etc/fstab: static file system information.\n"
            "UUID=2f3c1a52-lab0-4c1e-9d6a-000000000001 /     ext4 errors=remount-ro 0 1\n"
            "/swapfile                                 none  swap sw                0 0\n"
        )
        # network namespace with a veth to the bridge
        sh("ip", "netns", "add", node.netns)
        sh("ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
        sh("ip", "link", "set", node.veth, "master", self.bridge, "up")
        ns = ["ip", "netns", "exec", node.netns]
        sh(*ns, "ip", "addr", "add", f"{node.address}/24", "dev", "eth0")
        sh(*ns, "ip", "link", "set", "eth0", "up")
        sh(*ns, "ip", "link", "set", "lo", "up")
        sh(*ns, "ip", "route", "add", "default", "via", self.host_address)

    def start_node(self, node: LabNode, rootfs: Path | None = None, wait: bool = True) -> None:
        rootfs = rootfs or rootfs_dir() / "rootfs"
        work = node.dir / "work"
        log = open(node.dir / "sshd.log", "ab")
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                node.netns,
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "bash",
                str(HERE / "node-init.sh"),
                str(rootfs),
                str(node.upper),
                str(work),
                str(node.dir / "merged"),
                str(self.shared),
                node.name,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        node.pid, node.start = proc.pid, _start_time(proc.pid)
        self._procs = getattr(self, "_procs", {})
        self._procs[node.name] = proc
        if wait:
            wait_port(node.address, 22)
        self.save()

    def stop_node(self, node: LabNode) -> None:
        """Kill the node's sshd and everything in its PID namespace (a crash, not a shutdown)."""
        _kill_group(node.pid, node.start)
        proc = getattr(self, "_procs", {}).pop(node.name, None)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        node.pid, node.start = 0, None
        self.save()

    def restart_node(self, node: LabNode) -> None:
        self.stop_node(node)
        self.start_node(node)

    def new_host_key(self, node: LabNode) -> None:
        """Give the node a new host key (a reinstalled machine) and restart its sshd."""
        key = node.upper / "etc/ssh/ssh_host_ed25519_key"
        key.unlink()
        Path(str(key) + ".pub").unlink()
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name, "-f", str(key))
        self.restart_node(node)

    def down(self) -> None:
        for node in self.nodes:
            _kill_group(node.pid, node.start)
            proc = getattr(self, "_procs", {}).pop(node.name, None)
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)
        _kill_group(self.http_pid, self.http_start)
        if self.id:
            for node in self.nodes:
                sh("ip", "netns", "del", node.netns, check=False, quiet=True)
            sh("ip", "link", "del", self.bridge, check=False, quiet=True)
            shutil.rmtree(LOCK_DIR / str(self.id), ignore_errors=True)
        left = self.leftovers()
        if left:
            raise RuntimeError(f"lab {self.id} left behind: {', '.join(left)}")

    def leftovers(self) -> list[str]:
        if not self.id:
            return []
        out = []
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        out += [n for n in netns if n.startswith(f"{PREFIX}{self.id}-")]
        if Path(f"/sys/class/net/{self.bridge}").exists():
            out.append(f"bridge {self.bridge}")
        mounts = Path("/proc/self/mountinfo").read_text()
        if str(self.state / "nodes") in mounts:
            out.append("mounts under " + str(self.state / "nodes"))
        for node in self.nodes:
            if node.pid and _start_time(node.pid) == node.start:
                out.append(f"process {node.pid} ({node.name})")
        return out

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- what runs against the lab --
    def inventory(self, **overrides) -> dict:
        v = _versions()
        n = self.n
        inv = {
            "cluster": {"name": f"lab{self.id}", "kubernetes_version": str(v["kubernetes"]["version"])},
            "network": (
                {"subnet": self.subnet, "gateway": "n1", "public_interface": "eth0"}
                if self.with_gateway
                else {"subnet": self.subnet, "own_uplink": True}
            ),
            "ssh": {"user": USER, "port": 22, "become": True, "connect_timeout_s": 3, "command_timeout_s": 600},
            "packages": {"repository": self.repository_url, "suite": "./", "trusted": True},
            "nodes": [
                {
                    "name": x.name,
                    "address": x.address,
                    "roles": ["control-plane", "worker"] if x.index == 1 else ["worker"],
                    "cpu": 2,
                    "memory_gb": 2,
                }
                for x in self.nodes
            ],
            "components": {"mongo": {"replicas": min(3, n), "config_replicas": min(3, n)}},
        }
        for key, value in overrides.items():
            inv[key] = value
        return inv

    def write_inventory(self, path: Path | None = None, **overrides) -> Path:
        import yaml

        path = path or self.inventory_path
        path.write_text("# generated by tests/lab/lab.py\n" + yaml.safe_dump(self.inventory(**overrides), sort_keys=False))
        return path

    def env(self) -> dict[str, str]:
        """Environment for Airflow (connection datacloud_ssh) and datacloud (data dir)."""
        conn = {"conn_type": "ssh", "login": USER, "extra": {"key_file": str(self.key_file)}}
        return {"AIRFLOW_CONN_DATACLOUD_SSH": json.dumps(conn), "DATACLOUD_DATA_DIR": str(self.data_dir)}

    # -- what the doubles recorded --
    def calls(self) -> list[dict]:
        f = self.shared / "calls.jsonl"
        if not f.exists():
            return []
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]

    def cluster_state(self) -> dict:
        f = self.shared / "cluster.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def inject_fault(self, tool: str, subcommand: str, node: str, times: int = 1) -> None:
        """The double of TOOL SUBCOMMAND on NODE fails TIMES times like a transient error."""
        faults = self.shared / "faults"
        faults.mkdir(exist_ok=True)
        (faults / f"{tool}-{subcommand}-{node}").write_text(str(times))


# --- ./dev lab up N | ./dev lab down ------------------------------------------


def _dev_state() -> Path:
    return config.data_dir() / "lab"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="./dev lab", description="SSH lab nodes in network namespaces (root)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start N nodes")
    up.add_argument("n", type=int, nargs="?", default=3)
    up.add_argument("--own-uplink", action="store_true", help="inventory without a gateway node")
    sub.add_parser("down", help="stop the lab and remove its namespaces")
    sub.add_parser("status", help="show the lab")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the lab needs root (network namespaces, mounts); run it as root.", file=sys.stderr)
        return 2
    state = _dev_state()
    if args.cmd == "up":
        if (state / "lab.json").exists():
            print(f"error: a lab is already up ({state}); run ./dev lab down first.", file=sys.stderr)
            return 2
        if not 1 <= args.n <= 20:
            print("error: N must be between 1 and 20.", file=sys.stderr)
            return 2
        lab = Lab(args.n, state, with_gateway=not args.own_uplink).up()
        print(f"lab {lab.id}: {lab.n} nodes up in {lab.elapsed:.1f}s on {lab.subnet} (repository {lab.repository_url})")
        for x in lab.nodes:
            print(f"  {x.name}  {x.address}  netns {x.netns}")
        print(f"inventory:   {lab.inventory_path}")
        print(
            f"ssh:         ssh -i {lab.key_file} -o UserKnownHostsFile={lab.state / 'known_hosts'} {USER}@{lab.nodes[0].address}"
        )
        print("environment for Airflow (datacloud_ssh connection and the pinned host keys):")
        for key, value in lab.env().items():
            print(f"  export {key}={shlex.quote(value)}")
        return 0
    if args.cmd == "status":
        if not (state / "lab.json").exists():
            print("no lab is up")
            return 0
        lab = Lab.load(state)
        for x in lab.nodes:
            print(f"{x.name} {x.address} {'running' if x.root_pid() else 'stopped'}")
        return 0
    if not (state / "lab.json").exists():
        print("no lab is up")
        return 0
    lab = Lab.load(state)
    try:
        lab.down()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(state, ignore_errors=True)
    print(f"lab {lab.id} down: namespaces, bridge, processes and node files removed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
