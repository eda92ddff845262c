"""Benchmarks (``-m bench``): ingest against raw writes, and the Spark job on local vs standalone.

    .venv/bin/pytest -m bench tests/integration/test_flights_bench.py -s

Each prints one ``BENCH {...}`` JSON line; docs/bench/flights.md records the numbers.
Ratios are taken within one run against a baseline on the same server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, timedelta

import pymongo
import pytest
from pymongo import UpdateOne

from datacloud import spark as dspark
from datacloud.config import REPO_ROOT
from datacloud.pipelines import flights, land
from datacloud.pipelines.ingest import connect

pytestmark = pytest.mark.bench

DAYS = [date(2013, 1, 1) + timedelta(days=i) for i in range(10)]


def _report(name: str, **numbers) -> None:
    print("BENCH " + json.dumps({"bench": name, **numbers}), flush=True)


def test_ingest_against_insert_many_and_update_one_loop(ferretdb, tmp_path, monkeypatch):
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    for day in DAYS:
        flights.land(day)
    # The same documents, built up front for the baselines (not timed).
    prebuilt = {}
    for day in DAYS:
        lines = land.read_lines(flights.DATASET, day, "flights.jsonl")
        good, _ = flights.parse_lines(lines, day, flights.landed_carriers(day))
        prebuilt[day] = good
    total = sum(len(v) for v in prebuilt.values())
    base = f"mongodb://127.0.0.1:{ferretdb.mongo_port}/"

    ours_uri = base + f"bench_ours_{uuid.uuid4().hex[:8]}"
    mongo = connect(ours_uri)
    t = time.perf_counter()
    for day in DAYS:
        flights.ingest(day, "bench", mongo)  # read + validate + bulk write + quarantine
    ours = time.perf_counter() - t
    t = time.perf_counter()
    for day in DAYS:
        counts = flights.ingest(day, "bench", mongo)
        assert counts["unchanged"] == counts["good"]
    rerun = time.perf_counter() - t

    client = pymongo.MongoClient(base)
    raw_db = client[f"bench_raw_{uuid.uuid4().hex[:8]}"]
    raw_db.flights.create_index("date")
    t = time.perf_counter()
    for day in DAYS:
        raw_db.flights.insert_many(prebuilt[day], ordered=False)
    raw = time.perf_counter() - t

    loop_db = client[f"bench_loop_{uuid.uuid4().hex[:8]}"]
    loop_db.flights.create_index("date")
    loop_docs = [d for day in DAYS[:2] for d in prebuilt[day]]  # two days: the loop is slow
    t = time.perf_counter()
    for doc in loop_docs:
        loop_db.flights.update_one({"_id": doc["_id"]}, {"$set": doc}, upsert=True)
    loop = time.perf_counter() - t

    bulk_db = client[f"bench_bulk_{uuid.uuid4().hex[:8]}"]
    t = time.perf_counter()
    bulk_db.flights.bulk_write([UpdateOne({"_id": d["_id"]}, {"$set": d}, upsert=True) for d in loop_docs], ordered=False)
    bulk_upsert = time.perf_counter() - t

    ours_rate, raw_rate = total / ours, total / raw
    loop_rate, bulk_rate = len(loop_docs) / loop, len(loop_docs) / bulk_upsert
    _report(
        "ingest", days=len(DAYS), docs=total, ours_s=round(ours, 3), ours_docs_per_s=round(ours_rate),
        rerun_unchanged_s=round(rerun, 3), rerun_docs_per_s=round(total / rerun),
        insert_many_s=round(raw, 3), insert_many_docs_per_s=round(raw_rate),
        update_one_loop_docs=len(loop_docs), update_one_loop_docs_per_s=round(loop_rate),
        bulk_upsert_all_docs_per_s=round(bulk_rate),
        ours_vs_insert_many=round(ours_rate / raw_rate, 3), ours_vs_update_one_loop=round(ours_rate / loop_rate, 1),
    )
    for name in (ours_uri.rsplit("/", 1)[1], raw_db.name, loop_db.name, bulk_db.name):
        client.drop_database(name)


def test_spark_job_local_jvm_start_vs_work(ferretdb, tmp_path, monkeypatch):
    """One day on local[2] in a fresh process: JVM start, first run, a second run on the warm JVM."""
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    uri = f"mongodb://127.0.0.1:{ferretdb.mongo_port}/bench_spark_{uuid.uuid4().hex[:8]}"
    flights.land(DAYS[0])
    flights.ingest(DAYS[0], "bench", connect(uri))
    child = r"""
import json, sys, time
from pathlib import Path
from datacloud import spark
t = time.perf_counter()
session, _, jvm = spark.local_session()
job = spark._job_module()
landing = str(Path(sys.argv[2]) / "flights" / "date=2013-01-01")
first = job.run(session, "2013-01-01", landing, sys.argv[1], sys.argv[3])
second = job.run(session, "2013-01-01", landing, sys.argv[1], sys.argv[3])
session.stop()
print("RESULT " + json.dumps({"jvm_start_s": round(jvm, 2), "first_run_s": first["seconds"], "warm_run_s": second["seconds"],
                               "process_s": round(time.perf_counter() - t, 2)}))
"""
    env = {**os.environ, **ferretdb.env(), "PYTHONPATH": str(REPO_ROOT / "include"), "DATACLOUD_DATA_DIR": str(tmp_path / "data")}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", child, uri, str(tmp_path / "data" / "landing"), uri.rsplit("/", 1)[1]],
                          env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    _report("spark_local", wall_s=round(wall, 2), **result)


def test_spark_job_standalone(stack_factory, tmp_path, monkeypatch):
    """The standalone target for real: the provider's SparkSubmitOperator (our subclass) against spark://."""
    from datetime import datetime

    stack = stack_factory()
    stack.start_ferretdb()
    stack.start_spark()
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", "standalone")
    flights.land(DAYS[0])
    flights.ingest(DAYS[0], "bench", connect(stack.mongo_uri))
    deadline = time.monotonic() + 60
    while '"status" : "ALIVE"' not in _master_json(stack) and time.monotonic() < deadline:
        time.sleep(1)
    op = dspark.transform_operator(task_id="transform")
    start = datetime(2013, 1, 1, tzinfo=UTC)
    context = {"data_interval_start": start, "data_interval_end": start + timedelta(days=1)}
    t = time.perf_counter()
    result = op.execute(context)
    wall = time.perf_counter() - t
    db = pymongo.MongoClient(stack.mongo_uri).get_default_database()
    assert db.daily_delay_stats.count_documents({"date": "2013-01-01"}) == len(result["carriers"]) == 14
    _report("spark_standalone", operator_execute_s=round(wall, 2))


def _master_json(stack) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.spark_ui_port}/json/", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""
