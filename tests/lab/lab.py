"""The SSH lab: N real SSH nodes on this machine, for tests and for trying the DAG by hand.

Each node is

* a network namespace ``dclab<I>-n<k>`` with a veth pair to the lab's bridge
  ``dclab<I>`` on the host (``10.77.<I>.1/24``); the node is ``10.77.<I>.<10+k>``;
* an isolated root filesystem: the cached Debian bookworm tree built by
  ``include/scripts/setup.d/lab-rootfs.sh`` (read-only lower layer) under a
  per-node overlay whose upper directory holds everything the node changes;
* an ``sshd`` with its own host key, started as
  ``nsenter --net=/run/netns/NS unshare --mount --uts --pid --fork bash node-init.sh ...``
  (``nsenter``, not ``ip netns exec``, which remounts /sys and hides the cgroup
  hierarchies kubelet needs); node-init.sh mounts the overlay, /proc, /sys, the
  cgroups and the node's containerd/kubelet/etcd state folders inside the
  node's own mount namespace, so nothing leaks onto the host, boots the node's
  services and execs sshd;
* a cgroup root ``/datacloud-lab<I>-n<k>`` (``kubernetes.per_node_cgroup_root``):
  the nodes share the host's cgroup hierarchies, and two kubelets must not
  manage the same ``/kubepods``.

Lab nodes have no route to any registry; the lab is their private mirror, on
its bridge address, like the master of a network without internet:

* an apt repository: the Debian packages downloaded by the setup step
  (containerd, runc, ...) plus kubelet, kubeadm, kubectl, kubernetes-cni and
  helm as .debs of the binaries ``./dev setup`` built from the Go module proxy,
  versioned like pkgs.k8s.io (``tests/lab/mirror.py``);
* an OCI registry (Debian's docker-registry) holding the control-plane, etcd,
  CoreDNS, kube-proxy, pause and flannel images assembled from those binaries,
  which the nodes' containerd reaches through ``containerd.registry_mirrors``;
* a Helm chart repository serving ``../shared/charts``.

Nodes run containerd and kubelet as services of ``node-systemctl.py`` (the
lab's stand-in for systemd as init). Everything Kubernetes on them is real.

``./dev lab up N`` / ``./dev lab down`` (state in ``<data dir>/lab``); tests use
:class:`Lab` directly with their own state folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
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
from datacloud.localstack import process_start_time  # noqa: E402

HERE = Path(__file__).resolve().parent
SETUP_STEP = ROOT / "include" / "scripts" / "setup.d" / "lab-rootfs.sh"
SUITE = "bookworm"
PREFIX = "dclab"
LOCK_DIR = Path("/run/datacloud-lab")
USER = "datacloud"
# kubelet's disk floor on the lab's nodes, and what the host must have free when a lab starts (three nodes'
# containerd stores, the registry, the platform's claims: about 6 GiB at their peak)
EVICTION_FLOOR = "1Gi"
HOST_FREE_GIB = 10
UID = 1000


def sh(*argv: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, capture_output=True) if quiet else subprocess.run(argv, check=check)


def rootfs_dir() -> Path:
    """The cached root filesystem (built by the setup step when missing)."""
    env = {**os.environ, "CACHE": str(config.cache_dir()), "ROOT": str(ROOT)}
    dest = Path(
        subprocess.run(["bash", str(SETUP_STEP), "--dest"], env=env, check=True, capture_output=True, text=True).stdout.strip()
    )
    if not (dest / ".done").exists():
        print(f"lab | building the node root filesystem once ({dest}); this takes a few minutes", file=sys.stderr)
        subprocess.run(["bash", str(SETUP_STEP)], check=True, env=env)
    return dest


def _versions() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "manifests" / "versions.yaml").read_text())


def build_repo() -> Path:
    """A flat apt repository: the pool of the root filesystem plus the real Kubernetes .debs (cached)."""
    from tests.lab import mirror

    pool = rootfs_dir() / "pool"
    debs = mirror.build_packages(config.cache_dir() / "lab" / "debs")
    h = hashlib.sha256(str(pool).encode())
    for deb in sorted(debs):
        h.update(deb.name.encode() + str(deb.stat().st_size).encode() + str(deb.stat().st_mtime_ns).encode())
    h.update(b"signed-v1")  # InRelease and key.asc (repositories built before had neither)
    repo = config.cache_dir() / "lab" / f"repo-{h.hexdigest()[:12]}"
    if (repo / "InRelease").exists():
        return repo
    tmp = repo.with_name(repo.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in [*pool.glob("*.deb"), *debs]:
        try:
            os.link(deb, tmp / deb.name)
        except OSError:
            shutil.copy2(deb, tmp / deb.name)
    out = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=tmp, check=True, capture_output=True)
    (tmp / "Packages").write_bytes(out.stdout)
    subprocess.run(["gzip", "-k", "-9", "Packages"], cwd=tmp, check=True)
    _release(tmp)
    _sign(tmp)
    for old in repo.parent.glob("repo-*"):  # other versions, unused for a day (other checkouts may serve theirs)
        if old != repo and ".tmp" not in old.name and time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    tmp.rename(repo)
    return repo


def _release(repo: Path) -> None:
    """A Release file (signed into InRelease by _sign)."""
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


def _gnupg() -> Path:
    """The lab repository's own signing key (made once, cached): what an administrator's
    private mirror signs with. Its fingerprint is pinned by the lab inventory."""
    home = config.cache_dir() / "lab" / "repo-gnupg"
    if not (home / "done").exists():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True, mode=0o700)
        subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
             "datacloud lab repository <lab@datacloud.invalid>", "ed25519", "sign", "never"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        _stop_agent(home)
        (home / "done").touch()
    return home


def _stop_agent(home: Path) -> None:
    """gpg starts an agent for the key's folder; leave no process behind."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=30)


def repo_key_fingerprint() -> str:
    out = subprocess.run(
        ["gpg", "--homedir", str(_gnupg()), "--batch", "--with-colons", "--list-keys"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def _sign(repo: Path) -> None:
    """InRelease (the Release file, clear-signed) and the public key as key.asc."""
    home = str(_gnupg())
    subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--yes", "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key = subprocess.run(
        ["gpg", "--homedir", home, "--batch", "--armor", "--export"], check=True, capture_output=True, timeout=60
    )
    (repo / "key.asc").write_bytes(key.stdout)
    _stop_agent(Path(home))


def _kill_group(pid: int, start: str | None, timeout: float = 10) -> None:
    if start is None or process_start_time(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if process_start_time(pid) != start:
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
        if not self.pid or process_start_time(self.pid) != self.start:
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


def check_free_disk(paths: tuple[Path, ...], gib: float) -> None:
    """Refuse to start a lab on a host whose disk under PATHS has less than GIB free (kubelet would evict
    the platform's pods half way through a run)."""
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize / 2**30
        if free < gib:
            raise RuntimeError(
                f"{path} has {free:.1f} GiB free and a lab needs {gib} GiB: free some space (old builds sit in "
                f"{config.cache_dir()}/lab) and start it again"
            )


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
        self.charts_pid = 0
        self.charts_start: str | None = None
        self.charts_port = 0
        self.registry_state: dict | None = None
        self.registry_port = 0

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
            net = Path("/sys/class/net")
            if (net / f"{PREFIX}{i}").exists() or any(net.glob(f"{PREFIX}{i}v*")):  # another lab's links
                shutil.rmtree(lock, ignore_errors=True)
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
            "charts_pid": self.charts_pid,
            "charts_start": self.charts_start,
            "charts_port": self.charts_port,
            "registry": self.registry_state,
            "registry_port": self.registry_port,
            "nodes": [{"name": x.name, "index": x.index, "pid": x.pid, "start": x.start} for x in self.nodes],
        }
        (self.state / "lab.json").write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, state_dir: Path) -> Lab:
        data = json.loads((Path(state_dir) / "lab.json").read_text())
        lab = cls(data["n"], state_dir)
        lab.id = data["id"]
        lab.http_pid, lab.http_start, lab.repo_port = data["http_pid"], data["http_start"], data["repo_port"]
        lab.charts_pid, lab.charts_start, lab.charts_port = data["charts_pid"], data["charts_start"], data["charts_port"]
        lab.registry_state, lab.registry_port = data["registry"], data["registry_port"]
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
        check_free_disk((self.state, config.cache_dir()), HOST_FREE_GIB)
        rootfs = rootfs_dir() / "rootfs"
        repo = build_repo()
        self.state.mkdir(parents=True, exist_ok=True)
        self._reserve_id()
        self.nodes = [self._node(k) for k in range(1, self.n + 1)]
        self.save()
        try:
            if not self.key_file.exists():
                sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "datacloud-lab", "-f", str(self.key_file))
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            self._start_repo(repo)
            self._start_mirror()
            for node in self.nodes:
                self._make_node(node)
            for node in self.nodes:  # one after the other: a node's sshd binds before the next starts
                self.start_node(node, rootfs, wait=True)
            for node in self.nodes:
                wait_port(node.address, 22)
            self.write_inventory()
        except BaseException:
            self.down()
            raise
        self.save()
        self.elapsed = time.monotonic() - t0
        return self

    def _serve(self, directory: Path, log_name: str) -> tuple[int, str | None, int]:
        """A static HTTP server for DIRECTORY on the bridge address: (pid, start time, port)."""
        port = free_port_on(self.host_address)
        log = open(self.state / log_name, "ab")
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", self.host_address, "--directory", str(directory)]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        wait_port(self.host_address, port)
        return proc.pid, process_start_time(proc.pid), port

    def _start_repo(self, repo: Path) -> None:
        self.http_pid, self.http_start, self.repo_port = self._serve(repo, "repo-http.log")

    def _start_mirror(self) -> None:
        """The registry (images pushed once into the cached storage) and the chart repository."""
        from tests.lab import mirror

        images = mirror.build_images()
        self.registry_port = free_port_on(self.host_address)
        reg = mirror.Registry(self.host_address, self.registry_port, run_dir=self.state / "registry").start()
        self.registry_state = reg.state()
        self.save()
        reg.push(images)
        self.charts_pid, self.charts_start, self.charts_port = self._serve(mirror.chart_repository(), "charts-http.log")

    @property
    def registry_url(self) -> str:
        return f"http://{self.host_address}:{self.registry_port}"

    @property
    def charts_url(self) -> str:
        return f"http://{self.host_address}:{self.charts_port}"

    def kubeconfig(self) -> Path:
        """The lab cluster's admin kubeconfig, copied from the control plane (the API server is on the bridge)."""
        src = self.nodes[0].path("/etc/kubernetes/admin.conf")
        dest = self.state / "admin.conf"
        dest.write_bytes(src.read_bytes())
        dest.chmod(0o600)
        return dest

    def kubectl(
        self, *argv: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """The real kubectl ./dev setup built, against the lab cluster's API server (on the bridge)."""
        from tests.lab import mirror

        kubectl = mirror.bin_dir("kubernetes") / "kubectl"
        res = subprocess.run(
            [str(kubectl), "--kubeconfig", str(self.kubeconfig()), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(argv)} failed: {res.stderr.strip()}")
        return res

    def node_exec(self, node: LabNode, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ARGV inside NODE as root (its namespaces and root filesystem), not over SSH."""
        pid = node.root_pid()
        if pid is None:
            raise RuntimeError(f"lab node {node.name} is not running")
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", "-r", "-w", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

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
        if not (up / "etc/machine-id").exists():  # as an installed system has (kubelet reads it)
            (up / "etc/machine-id").write_text(hashlib.sha256(f"{self.state}/{node.name}".encode()).hexdigest()[:32] + "\n")
        # the lab's stand-in for systemd as init (containerd and kubelet run as its services)
        (up / "usr/local/bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / "node-systemctl.py", up / "usr/local/bin/systemctl")
        (up / "usr/local/bin/systemctl").chmod(0o755)
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
                "nsenter",
                f"--net=/run/netns/{node.netns}",
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
                str(node.dir / "state"),
                node.name,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        node.pid, node.start = proc.pid, process_start_time(proc.pid)
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

    # -- reaching in-cluster Services from this host, as an administrator does: SSH to the control plane --

    def _forwards_file(self) -> Path:
        return self.state / "forwards.json"

    def forwards(self) -> dict[str, dict]:
        """The SSH forwards that run: {"host:port": {"pid", "start", "port"}}."""
        path = self._forwards_file()
        data = json.loads(path.read_text()) if path.exists() else {}
        return {k: v for k, v in data.items() if process_start_time(v["pid"]) == v["start"]}

    def forward(self, host: str, port: int) -> int:
        """A local port on 127.0.0.1 forwarded by ``ssh -N -L`` through the control plane to HOST:PORT
        (a ClusterIP: kube-proxy's rules answer it there). Started once per target, kept until
        :meth:`stop_forwards` or :meth:`down`; the node's host key is pinned from its root filesystem."""
        key = f"{host}:{port}"
        running = self.forwards()
        if key in running:
            return int(running[key]["port"])
        cp = self.nodes[0]
        known = self.state / "known_hosts"
        pub = cp.path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        line = f"{cp.address} {pub[0]} {pub[1]}\n"
        if line not in (known.read_text() if known.exists() else ""):
            with known.open("a") as f:
                f.write(line)
        local = free_port_on("127.0.0.1")
        argv = ["ssh", "-N", "-i", str(self.key_file), "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15", "-o", "BatchMode=yes",
                "-L", f"127.0.0.1:{local}:{host}:{port}", f"{USER}@{cp.address}"]  # fmt: skip
        log = open(self.state / "forwards.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            wait_port("127.0.0.1", local)
        except RuntimeError:
            _kill_group(proc.pid, process_start_time(proc.pid))
            raise RuntimeError(
                f"the SSH forward to {key} through {cp.name} did not open; see {self.state / 'forwards.log'}"
            ) from None
        running[key] = {"pid": proc.pid, "start": process_start_time(proc.pid), "port": local}
        self._forwards_file().write_text(json.dumps(running, indent=1))
        return local

    def stop_forwards(self) -> None:
        for v in self.forwards().values():
            _kill_group(v["pid"], v["start"])
        self._forwards_file().unlink(missing_ok=True)

    def mongo_connection(self) -> dict:
        """The mongo stage's connection datacloud_mongo as this host reaches it: the application user through
        an SSH forward to the cluster's mongos (the stored one names mongos by its in-cluster DNS name)."""
        import base64

        from datacloud.inventory import load_inventory
        from datacloud.stages import mongo

        svc = json.loads(self.kubectl("-n", mongo.NAMESPACE, "get", "service", f"{mongo.CLUSTER}-mongos", "-o", "json").stdout)
        secret = json.loads(self.kubectl("-n", mongo.NAMESPACE, "get", "secret", f"{mongo.CLUSTER}-app", "-o", "json").stdout)
        password = base64.b64decode(secret["data"]["password"]).decode()
        port = self.forward(svc["spec"]["clusterIP"], mongo.MONGO_PORT)
        return {**mongo.airflow_connection(load_inventory(self.inventory_path), password), "host": "127.0.0.1", "port": port}

    def mongo_env(self) -> dict[str, str]:
        """DATACLOUD_MONGO_URI and AIRFLOW_CONN_DATACLOUD_MONGO (which Airflow takes before the stored
        connection) for this host: what ./dev lab env prints."""
        from datacloud.stages import mongo

        c = self.mongo_connection()
        return {
            "DATACLOUD_MONGO_URI": mongo.user_uri(c["password"], c["host"], c["port"]),
            "AIRFLOW_CONN_DATACLOUD_MONGO": json.dumps(c),
        }

    def down(self) -> None:
        self.stop_forwards()
        for node in self.nodes:
            _kill_group(node.pid, node.start)
            proc = getattr(self, "_procs", {}).pop(node.name, None)
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)
        _kill_group(self.http_pid, self.http_start)
        _kill_group(self.charts_pid, self.charts_start)
        if self.registry_state:
            from tests.lab import mirror

            mirror.Registry.from_state(self.registry_state).stop()
        self._remove_cgroups()
        if self.id:
            for node in self.nodes:
                # the host end first: a namespace outlives its processes while the kernel still
                # holds references to it (closing sockets), and with it the veth pair
                if Path(f"/sys/class/net/{node.veth}").exists():
                    sh("ip", "link", "del", node.veth, check=False, quiet=True)
                sh("ip", "netns", "del", node.netns, check=False, quiet=True)
            sh("ip", "link", "del", self.bridge, check=False, quiet=True)
            shutil.rmtree(LOCK_DIR / str(self.id), ignore_errors=True)
        left = self.leftovers()
        if left:
            raise RuntimeError(f"lab {self.id} left behind: {', '.join(left)}")

    def _cgroups(self) -> list[Path]:
        name = f"datacloud-lab{self.id}-"
        return [p for p in Path("/sys/fs/cgroup").glob(f"*/{name}*") if p.is_dir() and not p.is_symlink()]

    def _remove_cgroups(self, timeout: float = 20) -> None:
        """The nodes' kubelet cgroup roots (host-wide: they outlive the nodes' namespaces).

        A cgroup can be removed once its last process has exited, which trails the
        kill of the node's PID namespace by a moment: retried until TIMEOUT.
        """
        deadline = time.monotonic() + timeout
        while True:
            for root in self._cgroups():
                for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()
            if not self._cgroups() or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def leftovers(self) -> list[str]:
        if not self.id:
            return []
        out = []
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        out += [n for n in netns if n.startswith(f"{PREFIX}{self.id}-")]
        if Path(f"/sys/class/net/{self.bridge}").exists():
            out.append(f"bridge {self.bridge}")
        out += [f"veth {x.veth}" for x in self.nodes if Path(f"/sys/class/net/{x.veth}").exists()]
        mounts = Path("/proc/self/mountinfo").read_text()
        if str(self.state / "nodes") in mounts:
            out.append("mounts under " + str(self.state / "nodes"))
        for node in self.nodes:
            if node.pid and process_start_time(node.pid) == node.start:
                out.append(f"process {node.pid} ({node.name})")
        for what, pid, start in (
            ("apt repository", self.http_pid, self.http_start),
            ("chart repository", self.charts_pid, self.charts_start),
            ("registry", (self.registry_state or {}).get("pid"), (self.registry_state or {}).get("start_time")),
        ):
            if pid and start and process_start_time(pid) == start:
                out.append(f"process {pid} ({what})")
        out += [f"cgroup {p}" for p in self._cgroups()]
        return out

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- what runs against the lab --
    def inventory(self, **overrides) -> dict:
        from tests.lab import mirror

        v = _versions()
        n = self.n
        inv = {
            "cluster": {"name": f"lab{self.id}", "kubernetes_version": str(v["kubernetes"]["version"])},
            "network": (
                {"subnet": self.subnet, "gateway": "n1", "public_interface": "eth0"}
                if self.with_gateway
                else {"subnet": self.subnet, "own_uplink": True}
            )
            | {"cni": "flannel", "network_policy_agent": False},  # this kernel has no nft queue (CONFIG_NFT_QUEUE)
            "ssh": {"user": USER, "port": 22, "become": True, "connect_timeout_s": 3, "command_timeout_s": 600},
            "packages": {
                "repository": self.repository_url,
                "suite": "./",
                # signed like a private mirror should be; node_prep checks the key against the pin
                "apt_key_url": f"{self.repository_url}/key.asc",
                "apt_key_fingerprint": repo_key_fingerprint(),
                "chart_repository": self.charts_url,
            },
            # what this VM needs beyond a real machine (docs/operations.md, "Node runtime settings")
            "kubernetes": {
                "cgroup_driver": "cgroupfs",
                "allow_cgroup_v1": True,
                "per_node_cgroup_root": True,
                "kube_proxy_conntrack_max_per_core": 0,
                "ignore_preflight_errors": ["SystemVerification"],
                # the nodes' filesystems are the host's one disk, shared with its caches: kubelet's percentages of
                # it (imagefs 15 %) evict every pod of a host whose big disk is mostly full, so absolute floors
                "eviction_hard": {"nodefs.available": EVICTION_FLOOR, "imagefs.available": EVICTION_FLOOR},
            },
            "containerd": {
                "restrict_oom_score_adj": True,
                "registry_mirrors": {
                    up: [f"{self.registry_url}/v2/{up}"]
                    for up in ("registry.k8s.io", "ghcr.io", "docker.io", "quay.io", mirror.PROBE_REGISTRY)
                },
            },
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
            # the platform's own images (the Spark image) come from the lab registry, under its reserved host
            "images": {"registry": mirror.OWN_REGISTRY},
            "components": {
                # the operator and mongod are stood in (tests/lab/psmdb_operator_double.py, mongo_double.py):
                # a Python process per member and router, FerretDB in the first shard's first member
                "mongo": {
                    "replicas": min(3, n),
                    "config_replicas": min(3, n),
                    "operator": {"cpu_m": 25, "memory_mb": 48, "limit_memory_mb": 128},
                    "shard": {"cpu_m": 50, "memory_mb": 96, "limit_memory_mb": 384},
                    "config": {"cpu_m": 25, "memory_mb": 48, "limit_memory_mb": 128},
                    "router": {"cpu_m": 25, "memory_mb": 48, "limit_memory_mb": 192},
                    "volume_gb": 1,
                },
                # the operator's stand-in (tests/lab/spark_operator_double.py) submits with spark-submit, a JVM
                # 2 CPUs a node, and every pod that mounts the event-log claim (local-path: one node's folder)
                # runs on that node: the History Server, the Connect server and executors, every driver and executor
                "spark": {
                    "operator": {"cpu_m": 100, "memory_mb": 256, "limit_memory_mb": 768},
                    "driver": {"cpu_m": 100, "memory_mb": 1024, "limit_memory_mb": 1536},
                    "executor": {"cpu_m": 100, "memory_mb": 1024, "limit_memory_mb": 1536},
                },
            },
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
        return {
            "AIRFLOW_CONN_DATACLOUD_SSH": json.dumps(conn),
            "DATACLOUD_DATA_DIR": str(self.data_dir),
            "DATACLOUD_INVENTORY_DIRS": str(self.state),  # the lab's inventory lives with its state
        }


# --- ./dev lab up N | ./dev lab down ------------------------------------------


def _dev_state() -> Path:
    return config.data_dir() / "lab"


def forget_host_keys(lab: Lab) -> None:
    """Drop the lab nodes from the local stack's known_hosts: the next lab's nodes have new keys on the same addresses."""
    from datacloud.remote import known_hosts_path

    path = known_hosts_path()
    if not path.exists():
        return
    addresses = {x.address for x in lab.nodes}
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if ln.split(" ", 1)[0].strip("[").split("]", 1)[0] not in addresses]
    if kept != lines:
        path.write_text("".join(ln + "\n" for ln in kept))


def _outcomes(api, dag_id: str, run_id: str, ti: dict) -> list[str]:
    """What a task logged of its step: 'unchanged', 'changed N thing(s)', 'would change N thing(s)'."""
    import re
    import urllib.parse

    path = (
        f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{ti['task_id']}"
        f"/logs/{ti['try_number']}?map_index={ti['map_index']}&full_content=true"
    )
    content = api._request("GET", path).get("content") or []
    lines = [e.get("event", "") if isinstance(e, dict) else str(e) for e in content]
    found = [m.group(1) for ln in lines for m in [re.search(r"\| ((?:would )?change[sd]? \d+ thing\(s\)|unchanged)$", ln)] if m]
    return found[-1:]


def provision(lab: Lab, stages: str | None, dry_run: bool, timeout: int) -> int:
    """./dev lab provision: provision_platform on the lab nodes, triggered through the local stack's REST API."""
    from datacloud.api import AirflowAPI
    from datacloud.errors import UserError
    from datacloud.localstack import Stack
    from datacloud.stages import STAGES

    chosen = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    unknown = [s for s in chosen or [] if s not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}.", file=sys.stderr)
        return 2
    stack = Stack()
    stack.up()
    api = AirflowAPI(stack.airflow_url, "admin", stack.admin_password())
    # what an administrator sets up once: the SSH connection of the nodes and the per-node pool
    conn = {
        "connection_id": "datacloud_ssh",
        "conn_type": "ssh",
        "login": USER,
        "extra": json.dumps({"key_file": str(lab.key_file)}),
    }
    try:
        api._request("POST", "/api/v2/connections", conn)
    except UserError as exc:
        if " answered 409" not in str(exc):
            raise
        api._request("PATCH", "/api/v2/connections/datacloud_ssh", conn)
    api.ensure_pool("datacloud_nodes", 10, "datacloud per-node tasks")
    dag_id = "provision_platform"
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    conf: dict = {"inventory": str(lab.inventory_path), "dry_run": dry_run}
    if chosen:
        conf["stages"] = chosen
    t0 = time.monotonic()
    run = api.trigger(dag_id, conf=conf)
    print(f"{dag_id} run {run['dag_run_id']} on lab {lab.id} ({lab.n} nodes): {', '.join(chosen or ['every stage'])}", flush=True)
    final = api.wait_run(dag_id, run["dag_run_id"], timeout=timeout)
    rows: dict[str, list[str]] = {}
    outcomes: dict[str, list[str]] = {}
    for ti in api.task_instances(dag_id, run["dag_run_id"]):
        rows.setdefault(ti["task_id"], []).append(ti["state"] or "none")
        if ti["state"] == "success":
            outcomes.setdefault(ti["task_id"], []).extend(_outcomes(api, dag_id, run["dag_run_id"], ti))
    changed_total = 0
    for task_id in sorted(rows, key=lambda t: (STAGES.index(t.split(".")[0]) if t.split(".")[0] in STAGES else 99, t)):
        states = rows[task_id]
        summary = ", ".join(f"{n} {st}" for st, n in sorted({st: states.count(st) for st in states}.items()))
        said = outcomes.get(task_id, [])
        changed_total += sum(1 for o in said if o != "unchanged")
        print(f"  {task_id:<34} {summary:<12} {'; '.join(said)}")
    if final["state"] == "success":
        print("every step unchanged" if changed_total == 0 else f"{changed_total} step(s) changed something")
    print(
        f"{dag_id} {final['state']} in {time.monotonic() - t0:.0f}s; logs: {stack.airflow_url}/dags/{dag_id}/runs/{run['dag_run_id']}"
    )
    if final["state"] == "success" and not dry_run and lab.nodes[0].path("/etc/kubernetes/admin.conf").exists():
        print(f"kubeconfig: {lab.kubeconfig()}")
    return 0 if final["state"] == "success" else 1


def print_env(lab: Lab) -> int:
    """./dev lab env: export lines for this host. The connection datacloud_mongo the mongo stage stored names
    mongos by its in-cluster DNS name, which only the cluster resolves; here the same user goes through an SSH
    forward from the control plane (AIRFLOW_CONN_* take precedence over the stored connection)."""
    import shlex

    if lab.nodes[0].root_pid() is None or not lab.nodes[0].path("/etc/kubernetes/admin.conf").exists():
        print("error: the lab has no cluster yet; run ./dev lab provision first.", file=sys.stderr)
        return 2
    if lab.kubectl("get", "namespace", "mongo", check=False).returncode != 0:
        print("error: the lab cluster has no MongoDB yet; run ./dev lab provision with the mongo stage first.", file=sys.stderr)
        return 2
    env = lab.mongo_env()
    print(f"export KUBECONFIG={shlex.quote(str(lab.kubeconfig()))}")
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    port = json.loads(env["AIRFLOW_CONN_DATACLOUD_MONGO"])["port"]
    print(f"# 127.0.0.1:{port} is an SSH forward through {lab.nodes[0].name} to mongos; it runs until ./dev lab down")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="./dev lab", description="SSH lab nodes in network namespaces (root)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start N nodes")
    up.add_argument("n", type=int, nargs="?", default=3)
    up.add_argument("--own-uplink", action="store_true", help="inventory without a gateway node")
    sub.add_parser("down", help="stop the lab and remove its namespaces")
    sub.add_parser("status", help="show the lab")
    prov = sub.add_parser("provision", help="trigger provision_platform on the lab through the local stack and wait")
    prov.add_argument("--stages", help="comma-separated stages (default: every stage)")
    prov.add_argument("--dry-run", action="store_true", help="log what would change, change nothing")
    prov.add_argument("--timeout", type=int, default=3600, help="seconds to wait for the run (default 3600)")
    sub.add_parser("kubeconfig", help="print the path of the lab cluster's admin kubeconfig")
    sub.add_parser("env", help="print export lines for this host: the lab cluster's MongoDB (an SSH forward) and kubeconfig")
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
        print(f"mirror:      registry {lab.registry_url}, charts {lab.charts_url}")
        print("next:        ./dev lab provision [--stages a,b,...]  (through the local stack; or trigger provision_platform")
        print("             in the UI with this inventory), then ./dev lab kubeconfig")
        return 0
    if args.cmd in ("provision", "kubeconfig", "env") and not (state / "lab.json").exists():
        print("error: no lab is up; run ./dev lab up N first.", file=sys.stderr)
        return 2
    if args.cmd == "provision":
        return provision(Lab.load(state), args.stages, args.dry_run, args.timeout)
    if args.cmd == "kubeconfig":
        lab = Lab.load(state)
        if lab.nodes[0].root_pid() is None or not lab.nodes[0].path("/etc/kubernetes/admin.conf").exists():
            print("error: the lab has no cluster yet; run ./dev lab provision first.", file=sys.stderr)
            return 2
        print(lab.kubeconfig())
        return 0
    if args.cmd == "env":
        return print_env(Lab.load(state))
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
    forget_host_keys(lab)
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
