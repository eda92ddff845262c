"""A throwaway containerd (Debian's 1.6) on the host, for proving the lab's image mirror.

Everything it owns sits under one work folder: ``--root``, ``--state``, the
socket, the config and CNI folders. Its CRI plugin reads registry hosts from
``hosts_dir`` (``registry.config_path``), as the lab nodes' containerd does,
with ``restrict_oom_score_adj = true`` (root lacks CAP_SYS_RESOURCE on this
kind of VM). ``stop()`` deletes every container and task, kills containerd and
any shim that still names its socket (by pid), unmounts what is left under the
work folder and removes it.

    with ScratchContainerd(work, hosts_dir) as c:
        c.ctr("image", "pull", "--hosts-dir", str(hosts_dir), ref)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "include"))

from datacloud.localstack import process_start_time

NAMESPACE = "k8s.io"
SHIM_SOCKETS = Path("/run/containerd/s")


class ScratchContainerd:
    def __init__(self, work: Path, hosts_dir: Path, sandbox_image: str = "registry.k8s.io/pause:3.10.1") -> None:
        self.work = Path(work)
        self.hosts_dir = Path(hosts_dir)
        self.sandbox_image = sandbox_image
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.start_time: str | None = None
        # ctr run's default cgroup is /<namespace>/<id>, whose parent would outlive us: ours is removed by stop()
        self.cgroup_parent = f"datacloud-scratch-containerd-{os.getpid()}-{secrets.token_hex(3)}"

    @property
    def socket(self) -> Path:
        return self.work / "containerd.sock"

    def config_text(self) -> str:
        w = self.work
        return f"""\
version = 2
root = "{w}/root"
state = "{w}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{w}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{self.sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{w}/cni/bin"
  conf_dir = "{w}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{self.hosts_dir}"
"""

    def start(self, timeout: float = 20) -> ScratchContainerd:
        # containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir: remove it afterwards if it is ours
        self._run_dir_was_there = SHIM_SOCKETS.parent.exists()
        for d in ("root", "state", "opt", "cni/bin", "cni/net.d"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        cfg = self.work / "config.toml"
        cfg.write_text(self.config_text())
        with open(self.work / "containerd.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid, self.start_time = self.proc.pid, process_start_time(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()[-2000:]
                self.stop()
                raise RuntimeError(f"containerd exited: {log}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        log = self.log()[-2000:]
        self.stop()
        raise RuntimeError(f"containerd did not answer within {timeout:.0f}s: {log}")

    def log(self) -> str:
        p = self.work / "containerd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        out = subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", NAMESPACE, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: exit {out.returncode}: {out.stdout}{out.stderr}")
        return out

    def run(self, image: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """ctr run --rm IMAGE <id> ARGV (ARGV replaces the image's entrypoint and cmd)."""
        cid = f"probe-{os.getpid()}-{time.monotonic_ns()}"
        try:
            return self.ctr(
                "run",
                "--rm",
                "--cgroup",
                f"/{self.cgroup_parent}/{cid}",
                "--fifo-dir",
                str(self.work / "fifo"),
                "--runc-root",
                str(self.work / "runc"),
                image,
                cid,
                *argv,
                timeout=timeout,
            )
        finally:
            self.ctr("task", "rm", "-f", cid, check=False)
            self.ctr("container", "rm", cid, check=False)

    def _shims(self) -> list[int]:
        """PIDs of shims started for this containerd (their command line names its socket)."""
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    cmd = (d / "cmdline").read_bytes().split(b"\0")
                    if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in cmd:
                        pids.append(int(d.name))
        return pids

    def stop(self) -> None:
        if self.proc is not None and process_start_time(self.proc.pid) == self.start_time:
            for cid in self.ctr("container", "ls", "-q", check=False).stdout.split():
                self.ctr("task", "rm", "-f", cid, check=False)
                self.ctr("container", "rm", cid, check=False)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in self._shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            target = line.split()[4]
            if target.startswith(str(self.work) + "/"):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)
        for d in self._cgroups():
            with contextlib.suppress(OSError):
                d.rmdir()
        if not getattr(self, "_run_dir_was_there", True):
            for d in sorted((p for p in SHIM_SOCKETS.parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()  # empty folders only: anything still in use stays
            with contextlib.suppress(OSError):
                SHIM_SOCKETS.parent.rmdir()
        shutil.rmtree(self.work, ignore_errors=True)
        self.proc = None

    def _cgroups(self) -> list[Path]:
        return [d for d in Path("/sys/fs/cgroup").glob(f"*/{self.cgroup_parent}") if d.is_dir()] + [
            d for d in [Path("/sys/fs/cgroup") / self.cgroup_parent] if d.is_dir()
        ]

    def leftovers(self) -> list[str]:
        out = [f"shim {pid}" for pid in self._shims()]
        if self.pid and process_start_time(self.pid) == self.start_time:
            out.append(f"containerd {self.pid}")
        out += [f"cgroup {d}" for d in self._cgroups()]
        if str(self.work) + "/" in Path("/proc/self/mountinfo").read_text():
            out.append(f"mounts under {self.work}")
        return out

    def __enter__(self) -> ScratchContainerd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
