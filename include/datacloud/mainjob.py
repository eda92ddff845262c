"""``./dev run [--from YYYY-MM-DD] [--to YYYY-MM-DD]``: the main job -- days of flights through the running scheduler.

1. ``./dev up`` (FerretDB, the Spark Connect server, ``airflow standalone``; already
   running is fine); the transform runs on the Connect server unless
   ``DATACLOUD_SPARK_TARGET`` says otherwise;
2. a real backfill of ``etl_flights_daily`` for the range (default 2013-01-01 ..
   2013-01-07; any range inside 2013) through the REST API (``POST /api/v2/backfills``,
   the same thing ``airflow backfill create`` does), reprocessing days that ran
   before -- the pipeline is idempotent, so a second ``./dev run`` leaves MongoDB as it was;
3. wait until every run of the range has finished;
4. print a per-carrier table for the range read from MongoDB (``daily_delay_stats``),
   the wall time, and where to look in the UI.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import date, timedelta
from typing import Any

from datacloud.api import AirflowAPI
from datacloud.errors import TransientError, UserError
from datacloud.localstack import Stack
from datacloud.pipelines.flights import DAG_ID, DELAY_STATS, FIRST_DAY, LAST_DAY

log = logging.getLogger(__name__)

FIRST = date(2013, 1, 1)
LAST = date(2013, 1, 7)
TIMEOUT_S = 1800  # at the least; a longer range gets TIMEOUT_PER_DAY_S more per day
TIMEOUT_PER_DAY_S = 30
CHUNK_DAYS = 31  # days per backfill (see chunks())
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_range(first: str | None, last: str | None) -> tuple[date, date]:
    """The days ``./dev run`` backfills: both given, one (``--from`` alone is one day, ``--to`` alone starts
    on 2013-01-01) or neither (the first week); a bad date or range is one sentence."""
    if first is None and last is None:
        return FIRST, LAST

    def day(value: str, flag: str) -> date:
        try:
            if not _ISO_DAY.fullmatch(value):
                raise ValueError
            parsed = date.fromisoformat(value)
        except ValueError:
            raise UserError(f"{flag} {value!r} is not a date; write it as YYYY-MM-DD, e.g. {flag} 2013-02-01.") from None
        if not FIRST_DAY <= parsed <= LAST_DAY:
            raise UserError(f"{flag} {value} is outside the flights data; pick days from {FIRST_DAY} to {LAST_DAY}.")
        return parsed

    start = day(first, "--from") if first is not None else FIRST_DAY
    end = day(last, "--to") if last is not None else start
    if end < start:
        raise UserError(f"--to {end} is before --from {start}; give the first day first.")
    return start, end


def chunks(first: date, last: date, size: int | None = None) -> list[tuple[date, date]]:
    """[first, last] in backfills of at most CHUNK_DAYS days, one after the other.

    Airflow creates a backfill's runs in one transaction; on the local stack's SQLite a
    year's 365 runs hold the write lock so long that the API answers 503 every time
    (seen: it gets ~40 runs in, then "database is locked"), and a DAG has one backfill at a time.
    """
    size = size or CHUNK_DAYS
    out = []
    start = first
    while start <= last:
        end = min(last, start + timedelta(days=size - 1))
        out.append((start, end))
        start = end + timedelta(days=1)
    return out


def _days(first: date, last: date) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def backfill(
    api: AirflowAPI, first: date, last: date, max_active_runs: int | None = None, stack: Stack | None = None
) -> dict[str, Any]:
    """Create a backfill (reprocessing finished runs); waits for one already running on the DAG first."""
    body: dict[str, Any] = {
        "dag_id": DAG_ID,
        "from_date": f"{first.isoformat()}T00:00:00Z",
        "to_date": f"{last.isoformat()}T00:00:00Z",
        "reprocess_behavior": "completed",
        "run_backwards": False,
        "dag_run_conf": {},
    }
    if max_active_runs:
        body["max_active_runs"] = max_active_runs
    for attempt in range(1, 6):
        for existing in api._request("GET", f"/api/v2/backfills?dag_id={DAG_ID}&limit=100")["backfills"]:
            if not existing.get("completed_at"):
                log.info("Run | waiting for backfill %s that is still running", existing["id"])
                try:
                    wait_backfill(api, existing["id"], stack=stack)
                except UserError as exc:
                    # A backfill whose creation answered 503 is rolled back: listed a moment, then gone.
                    if "answered 404" not in str(exc):
                        raise
                    log.info("Run | backfill %s was rolled back", existing["id"])
        ensure_scheduler(stack, api)
        try:
            return api._request("POST", "/api/v2/backfills", body)
        except TransientError as exc:
            # SQLite behind airflow standalone: the scheduler may hold the write lock; the API
            # rolls the whole backfill back and answers 503, so trying again is safe.
            log.info("Run | %s; trying again (%d/5)", exc, attempt)
            time.sleep(3 * attempt)
    raise UserError(f"Airflow did not accept the backfill of {DAG_ID} after 5 attempts; see .data/run/airflow.log.")


def ensure_scheduler(stack: Stack | None, api: AirflowAPI) -> None:
    """Restart ``airflow standalone`` when one of its components died.

    On SQLite a backfill created while the scheduler writes can fail with
    "database is locked"; Airflow then deletes the half-made runs, and a
    scheduler that was already looking at them can exit. ``airflow standalone``
    does not restart it, so we do (the runs live in the metadata DB and go on).
    """
    if stack is None or stack.airflow_healthy():
        return
    time.sleep(5)  # the health endpoint lags a heartbeat behind
    if stack.airflow_healthy():
        return
    log.warning("Run | an Airflow component is not healthy; restarting airflow standalone")
    stack.stop("airflow")
    stack.start_airflow()
    api._token = None  # a new api-server may sign tokens with a new secret


def wait_backfill(
    api: AirflowAPI,
    backfill_id: int,
    timeout: float = TIMEOUT_S,
    stack: Stack | None = None,
    first: date = FIRST,
    last: date = LAST,
) -> dict[str, Any]:
    start = time.monotonic()
    last_report = start
    while True:
        info = api._request("GET", f"/api/v2/backfills/{backfill_id}")
        if info.get("completed_at"):
            return info
        if time.monotonic() - start > timeout:
            raise UserError(f"backfill {backfill_id} of {DAG_ID} is still running after {timeout:.0f}s; see the Airflow UI.")
        if time.monotonic() - last_report >= 20:
            ensure_scheduler(stack, api)
            runs = _week_runs(api, first, last)
            states = {}
            for r in runs.values():
                states[r["state"]] = states.get(r["state"], 0) + 1
            log.info(
                "Run | backfill %s: %s (%.0fs)",
                backfill_id,
                ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
                time.monotonic() - start,
            )
            last_report = time.monotonic()
        time.sleep(2)


def _week_runs(api: AirflowAPI, first: date, last: date) -> dict[str, dict[str, Any]]:
    """The latest run per logical date in [first, last] (by date string), page by page."""
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        path = (
            f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100&offset={offset}&order_by=start_date"
            f"&logical_date_gte={first.isoformat()}T00:00:00Z&logical_date_lte={last.isoformat()}T00:00:00Z"
        )
        page = api._request("GET", path)
        for run in page["dag_runs"]:
            out[run["logical_date"][:10]] = run
        offset += len(page["dag_runs"])
        if not page["dag_runs"] or offset >= int(page.get("total_entries", 0)) or offset >= 10_000:
            return out


def week_table(db, first: date, last: date) -> tuple[list[dict[str, Any]], str]:
    """Per-carrier numbers for the days in [first, last] from daily_delay_stats, and the text table."""
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    rows: dict[str, dict[str, Any]] = {}
    for doc in db[DELAY_STATS].find({"date": {"$in": days}}):
        r = rows.setdefault(
            doc["carrier"],
            {
                "carrier": doc["carrier"],
                "name": doc.get("carrier_name") or "?",
                "days": 0,
                "flights": 0,
                "cancelled": 0,
                "_dep": 0.0,
                "_dep_n": 0,
                "_arr": 0.0,
                "_arr_n": 0,
                "_late": 0.0,
            },
        )
        departed = int(doc.get("departed") or 0)
        arrived = int(doc.get("arrived") or 0)
        r["days"] += 1
        r["flights"] += int(doc["flights"])
        r["cancelled"] += int(doc["cancelled"])
        if doc.get("mean_dep_delay") is not None:
            r["_dep"] += doc["mean_dep_delay"] * departed
            r["_dep_n"] += departed
            r["_late"] += (doc.get("delayed_15_share") or 0.0) * departed
        if doc.get("mean_arr_delay") is not None:
            r["_arr"] += doc["mean_arr_delay"] * arrived
            r["_arr_n"] += arrived
    table = []
    for r in sorted(rows.values(), key=lambda r: -r["flights"]):
        table.append(
            {
                "carrier": r["carrier"],
                "name": r["name"],
                "days": r["days"],
                "flights": r["flights"],
                "cancelled": r["cancelled"],
                "mean_dep_delay": r["_dep"] / r["_dep_n"] if r["_dep_n"] else None,
                "mean_arr_delay": r["_arr"] / r["_arr_n"] if r["_arr_n"] else None,
                "delayed_15_share": r["_late"] / r["_dep_n"] if r["_dep_n"] else None,
            }
        )
    return table, format_table(table, first, last)


def format_table(table: list[dict[str, Any]], first: date, last: date) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = (
        f"{'carrier':<8}{'airline':<28}{'days':>5}{'flights':>9}{'cancelled':>11}"
        f"{'dep delay':>11}{'arr delay':>11}{'>=15 min':>10}"
    )
    lines = [
        f"Flights from New York, {first} .. {last} (daily_delay_stats; delays in minutes, mean over flown legs)",
        head,
        "-" * len(head),
    ]
    for r in table:
        lines.append(
            f"{r['carrier']:<8}{r['name'][:27]:<28}{r['days']:>5}{r['flights']:>9}{r['cancelled']:>11}"
            f"{num(r['mean_dep_delay'], '.1f'):>11}{num(r['mean_arr_delay'], '.1f'):>11}"
            f"{num(r['delayed_15_share'] * 100 if r['delayed_15_share'] is not None else None, '.1f') + ' %':>10}"
        )
    total_f = sum(r["flights"] for r in table)
    total_c = sum(r["cancelled"] for r in table)
    lines.append("-" * len(head))
    lines.append(f"{'all':<8}{'':<28}{'':>5}{total_f:>9}{total_c:>11}")
    return "\n".join(lines)


def run(first: date = FIRST, last: date = LAST) -> int:
    import pymongo

    from datacloud import spark

    wall = time.monotonic()
    stack = Stack()
    stack.up()
    api = AirflowAPI(stack.airflow_url, "admin", stack.admin_password())
    api.wait_for_dag(DAG_ID)
    errors = [e for e in api.import_errors() if DAG_ID in e.get("filename", "")]
    if errors:
        raise UserError(f"{DAG_ID} does not import: {errors[0].get('stack_trace', '').strip().splitlines()[-1]}")
    api.unpause(DAG_ID)  # no scheduled runs follow: the DAG ends 2013-12-31 and catchup is off
    days = _days(first, last)
    target = stack.spark_target
    started = time.monotonic()
    for chunk_first, chunk_last in chunks(first, last):
        created = backfill(api, chunk_first, chunk_last, max_active_runs=spark.max_active_runs(target), stack=stack)
        n = (chunk_last - chunk_first).days + 1
        print(
            f"backfill {created['id']} of {DAG_ID}: {chunk_first} .. {chunk_last}, {n} day(s), Spark target {target} "
            "(reprocessing finished days)",
            flush=True,
        )
        timeout = max(TIMEOUT_S, TIMEOUT_PER_DAY_S * n)
        wait_backfill(api, created["id"], timeout=timeout, stack=stack, first=chunk_first, last=chunk_last)
    backfill_s = time.monotonic() - started
    runs = _week_runs(api, first, last)
    failed = {d: r for d, r in runs.items() if r["state"] != "success"}
    missing = [d for d in days if d not in runs]
    ui = f"{stack.airflow_url}/dags/{DAG_ID}"
    if failed or missing:
        items = [f"{d} {r['state']}" for d, r in sorted(failed.items())] or [f"no run for {d}" for d in missing]
        what = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        raise UserError(f"the backfill of {DAG_ID} did not succeed for every day ({what}); open {ui} for the task logs.")
    print(f"{len(days)} runs succeeded in {backfill_s:.0f}s", flush=True)
    client = pymongo.MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=10000)
    try:
        _, text = week_table(client.get_default_database(), first, last)
    finally:
        client.close()
    print()
    print(text)
    print()
    print(f"wall time: {time.monotonic() - wall:.0f}s ({len(days)} day(s) backfilled in {backfill_s:.0f}s)")
    print(f"Airflow UI: {ui}  (user admin, password in {stack.password_file})")
    print(f"MongoDB (FerretDB): {stack.mongo_uri}  (flights, flights_rejected, daily_delay_stats, daily_origin_weather)")
    print(f"Spark Connect: {stack.connect_url}")
    print("stop with ./dev down")
    return 0
