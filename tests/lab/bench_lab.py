"""Benchmark: the lab cluster's bring-up and provision_platform's stages on real nodes.

    .venv/bin/python -m tests.lab.bench_lab N      (root; N nodes, 1..5)

Brings a lab of N nodes up, runs provision_platform (the stages the lab runs:
tests/lab/test_provision_lab.py STAGES) with dag.test() twice, reads the API
server until every node is Ready, measures the RSS of the control plane's
processes on n1 and the peak RSS of everything the lab's nodes run (sampled every
2 s during the first run), takes the lab down and prints one JSON line. The second
run is the baseline the first is compared with (same lab, same machine, minutes apart).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.lab.lab import Lab
from tests.lab.test_provision_lab import STAGES, airflow_env, api, ready, run_dag

CONTROL_PLANE = (
    "kube-apiserver",
    "etcd",
    "kube-controller",
    "kube-scheduler",
    "kubelet",
    "containerd",
    "kube-proxy",
    "coredns",
    "flanneld",
)


def rss_mib(lab: Lab) -> dict[str, float]:
    """VmRSS of the processes named in CONTROL_PLANE on node n1, MiB (summed per name).

    kubelet and containerd run in the node's PID namespace; the control plane's
    static pods in their own, under the node's cgroup root.
    """
    import os

    node = lab.nodes[0]
    ns = os.readlink(f"/proc/{node.root_pid()}/ns/pid")
    root = f"/datacloud-lab{lab.id}-{node.name}/"
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            mine = os.readlink(proc / "ns/pid") == ns or root in (proc / "cgroup").read_text()
            comm = (proc / "comm").read_text().strip()
            status = (proc / "status").read_text()
        except OSError:
            continue
        name = next((c for c in CONTROL_PLANE if comm.startswith(c[:15])), None)
        if not mine or name is None:
            continue
        kb = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
        out[name] = round(out.get(name, 0) + kb / 1024, 1)
    return out


def lab_rss_mib(lab: Lab) -> float:
    """VmRSS of every process of the lab's nodes (their PID namespaces and cgroup roots), MiB."""
    import os

    spaces = {os.readlink(f"/proc/{node.root_pid()}/ns/pid") for node in lab.nodes}
    root = f"/datacloud-lab{lab.id}-"
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "ns/pid") not in spaces and root not in (proc / "cgroup").read_text():
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        total += int(next((ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")), "0"))
    return round(total / 1024, 1)


class PeakRss:
    """Samples lab_rss_mib every 2 s in a thread; ``peak`` is the highest sample."""

    def __init__(self, lab: Lab) -> None:
        import threading

        self.lab, self.peak, self._stop = lab, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(2):
            try:
                self.peak = max(self.peak, lab_rss_mib(self.lab))
            except Exception:  # a node restarting between two reads
                continue

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def provision(lab: Lab, env: dict[str, str]) -> float:
    """One provision_platform run of the lab's stages; its wall seconds (SystemExit when it failed)."""
    t = time.monotonic()
    result, out = run_dag(env, "provision_platform", {"inventory": str(lab.inventory_path), "stages": STAGES})
    if result["state"] != "success":
        print(out[-3000:], file=sys.stderr)
        raise SystemExit(1)
    return time.monotonic() - t


def main(n: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="datacloud-lab-bench-"))
    lab = Lab(n, work / "lab")
    try:
        t0 = time.monotonic()
        lab.up()
        up_s = time.monotonic() - t0
        env = airflow_env(lab, work)
        with PeakRss(lab) as peak:
            first_s = provision(lab, env)
        nodes = api(lab, "get", "nodes")["items"]
        assert len(nodes) == n and all(ready(x) for x in nodes), "not every node is Ready"
        ready_s = time.monotonic() - t0
        time.sleep(20)  # let the control plane settle before reading its memory
        rss = rss_mib(lab)
        second_s = provision(lab, env)
        print(
            json.dumps(
                {
                    "nodes": n,
                    "lab_up_s": round(up_s, 1),
                    "up_to_all_ready_s": round(ready_s, 1),
                    "first_run_s": round(first_s, 1),
                    "second_run_s": round(second_s, 1),
                    "first_over_second": round(first_s / second_s, 2),
                    "n1_rss_mib": rss,
                    "n1_rss_total_mib": round(sum(rss.values()), 1),
                    "stages": STAGES,
                    "lab_peak_rss_mib_first_run": peak.peak,
                }
            )
        )
        return 0
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    if not 1 <= count <= 5:
        sys.exit("N must be between 1 and 5")
    sys.exit(main(count))
