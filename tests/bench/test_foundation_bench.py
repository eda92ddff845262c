"""Foundation benchmarks (run with: ./dev test -m bench tests/bench/test_foundation_bench.py -s).

* DAG parse time per file, each against a one-task DAG parsed in the same run
  (the baseline carries the cost of importing Airflow itself);
* ``airflow standalone`` time to healthy and its memory (sum of RSS of its
  process group), once per run.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from datacloud.localstack import Stack, free_port
from tests.dags.test_dag_integrity import DAG_FILES, parse

BASELINE = """
from airflow.sdk import dag, task
import pendulum

@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), tags=["x"])
def baseline():
    @task
    def t():
        return 1
    t()

baseline()
"""


def test_dag_parse_time(tmp_path: Path) -> None:
    base_file = tmp_path / "baseline_dag.py"
    base_file.write_text(BASELINE)
    rows = []
    for path in DAG_FILES:
        ours, base = [], []
        for _ in range(5):  # paired runs: ours, baseline, ours, baseline ...
            ours.append(parse(path)["elapsed"])
            base.append(parse(base_file)["elapsed"])
        m, b = statistics.median(ours), statistics.median(base)
        rows.append((path.name, m, b, m / b))
    print("\n| DAG file | parse median (s) | one-task DAG median (s) | ratio |")
    print("|---|---|---|---|")
    for name, m, b, r in rows:
        print(f"| {name} | {m:.3f} | {b:.3f} | {r:.2f} |")


def _group_rss_mb(pgid: int) -> float:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def test_standalone_time_to_healthy(tmp_path: Path) -> None:
    rows = []
    for i in range(2):  # first start migrates the DB; the second is a warm restart
        stack = Stack(data_dir=tmp_path / "s", airflow_port=free_port(), mongo_port=free_port())
        start = time.monotonic()
        try:
            stack.start_airflow()
            healthy = time.monotonic() - start
            time.sleep(20)  # let the components settle before reading memory
            rows.append(("cold (db migrate)" if i == 0 else "warm restart", healthy, _group_rss_mb(stack.running("airflow"))))
        finally:
            stack.down()
    print("\n| start | time to healthy (s) | RSS of the process group after 20 s (MiB) |")
    print("|---|---|---|")
    for name, t, rss in rows:
        print(f"| {name} | {t:.1f} | {rss:.0f} |")
