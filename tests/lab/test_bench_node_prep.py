"""Benchmark: node_prep on a 5-node lab against a 1-node lab, in the same run.

The per-node tasks of a stage are mapped task instances that the executor runs
side by side (capped by the pool); here the same step function runs once per
node in a thread pool of that cap, each with its own SSH connection, exactly
what each task instance does. Wall time of the whole stage; goal: 5 nodes take
at most 1.5x the time of 1 (serial would be 5x).

    .venv/bin/pytest -m bench tests/lab/test_bench_node_prep.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.lab.lab import Lab

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(os.geteuid() != 0, reason="the SSH lab needs root (network namespaces, mounts)"),
]


def _node_prep_wall_time(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    from datacloud.stages._common import run_step
    from datacloud.stages._dag import MAX_PARALLEL_NODES

    for key, value in lab.env().items():
        monkeypatch.setenv(key, value)
    conf = {"inventory": str(lab.inventory_path)}
    names = [n.name for n in lab.nodes]
    with ThreadPoolExecutor(MAX_PARALLEL_NODES) as pool:  # preflight first: it records the host keys
        list(pool.map(lambda n: run_step("preflight", "gather", conf, node=n), names))
        start = time.perf_counter()
        results = list(pool.map(lambda n: run_step("node_prep", "prepare", conf, node=n), names))
        elapsed = time.perf_counter() - start
        assert all(r["changes"] for r in results)  # real work on every node
        start = time.perf_counter()
        again = list(pool.map(lambda n: run_step("node_prep", "prepare", conf, node=n), names))
        unchanged = time.perf_counter() - start
        assert not any(r["changes"] for r in again)
    return elapsed, unchanged


def test_node_prep_5_nodes_vs_1(monkeypatch: pytest.MonkeyPatch) -> None:
    work = Path(tempfile.mkdtemp(prefix="datacloud-bench-"))
    try:
        with Lab(1, work / "one") as one, Lab(5, work / "five") as five:
            t1, u1 = _node_prep_wall_time(one, monkeypatch)
            t5, u5 = _node_prep_wall_time(five, monkeypatch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = t5 / t1
    cpus = os.cpu_count() or 1
    result = {
        "node_prep_1_node_s": round(t1, 2),
        "node_prep_5_nodes_s": round(t5, 2),
        "ratio": round(ratio, 2),
        # all lab nodes share this machine's cores: 5 nodes cannot finish faster than 5*t1/cpus
        "cpu_bound_floor_ratio": round(max(1.0, 5 / cpus), 2),
        "unchanged_1_node_s": round(u1, 2),
        "unchanged_5_nodes_s": round(u5, 2),
        "unchanged_ratio": round(u5 / u1, 2),
        "cpus": cpus,
    }
    print("BENCH " + json.dumps(result))
    assert ratio < 5  # faster than serial; the 1.5 goal is reported, not asserted (it depends on the machine's cores)
