"""Quality gates for one day: measured numbers in, one sentence per failed gate out.

The numbers are measured independently of what ingest reported: good rows are
recounted by validating the landed file again, everything else is counted in
MongoDB. ``evaluate`` is pure (unit-tested); ``measure`` does the I/O.

Besides the counts that must agree, three gates judge the day on its own terms,
so that a share threshold set high lets no broken day through:

* volume: an empty day never passes, and a day with fewer good flights than
  ``min_volume_ratio`` of the median of the days around it (D-7 .. D+7, from
  ``daily_delay_stats``; judged once ``MIN_NEIGHBOURS`` of them are loaded) fails:
  a truncated or mostly rejected drop;
* content: every stored document of the day is validated again from its own
  fields (required fields present, types, ranges, ``_id`` = natural key);
* keys unique: no natural key twice.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from datacloud.errors import UserError

log = logging.getLogger(__name__)

NEIGHBOUR_DAYS = 7  # the volume gate compares with the days D-7 .. D+7 ...
MIN_NEIGHBOURS = 3  # ... once at least this many of them are loaded


class QualityError(UserError):
    """A gate failed: the data is wrong, retrying the same run will not fix it."""


@dataclass
class Measured:
    date: str
    source_rows: int  # lines in the landed file
    good_landed: int  # lines of it that pass validation (recounted)
    flights_in_mongo: int
    rejected_in_mongo: int
    duplicate_keys: int  # natural keys held by more than one document
    carriers_flown: list[str] = field(default_factory=list)
    stats_carriers: list[str] = field(default_factory=list)  # one entry per daily_delay_stats document
    stats_flights: int = 0  # sum of ``flights`` over the day's stats documents
    invalid_docs: int = 0  # stored documents that fail validation of their own fields
    invalid_example: str = ""  # the first of them: "<_id>: <reason>"
    neighbour_flights: dict[str, int] = field(default_factory=dict)  # flights per day around it (daily_delay_stats)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def evaluate(m: Measured, max_rejected_share: float, min_volume_ratio: float = 0.5) -> list[str]:
    """The failed gates, one sentence each naming the number that is off (empty: all pass)."""
    problems: list[str] = []
    if m.flights_in_mongo == 0:
        problems.append(
            f"there are no flights for {m.date} in MongoDB ({m.source_rows} rows landed, {m.rejected_in_mongo} rejected); "
            "an empty day never passes."
        )
    if len(m.neighbour_flights) >= MIN_NEIGHBOURS:
        median = statistics.median(m.neighbour_flights.values())
        if m.flights_in_mongo < min_volume_ratio * median:
            problems.append(
                f"{m.date} has {m.flights_in_mongo} flights, {m.flights_in_mongo / median:.0%} of the median "
                f"({median:g}) of the {len(m.neighbour_flights)} days around it, below the {min_volume_ratio:.0%} "
                "minimum: is the drop truncated or mostly rejected?"
            )
    if m.invalid_docs:
        problems.append(
            f"{m.invalid_docs} documents in flights for {m.date} break the validation rules (first: {m.invalid_example})."
        )
    if m.flights_in_mongo != m.good_landed:
        problems.append(f"MongoDB holds {m.flights_in_mongo} flights for {m.date} but {m.good_landed} good rows were landed.")
    if m.flights_in_mongo + m.rejected_in_mongo != m.source_rows:
        problems.append(
            f"good {m.flights_in_mongo} + rejected {m.rejected_in_mongo} = {m.flights_in_mongo + m.rejected_in_mongo} "
            f"rows for {m.date}, but the source has {m.source_rows}."
        )
    if m.duplicate_keys:
        problems.append(f"{m.duplicate_keys} natural keys appear more than once in flights for {m.date}.")
    flown = set(m.carriers_flown)
    seen = set(m.stats_carriers)
    doubled = sorted({c for c in m.stats_carriers if m.stats_carriers.count(c) > 1})
    if seen != flown or doubled:
        detail = []
        if flown - seen:
            detail.append(f"missing {', '.join(sorted(flown - seen))}")
        if seen - flown:
            detail.append(f"extra {', '.join(sorted(seen - flown))}")
        if doubled:
            detail.append(f"more than one for {', '.join(doubled)}")
        problems.append(
            f"daily_delay_stats has {len(m.stats_carriers)} documents for {m.date} but {len(flown)} carriers flew "
            f"({'; '.join(detail)})."
        )
    elif m.stats_flights != m.flights_in_mongo:
        problems.append(
            f"daily_delay_stats counts {m.stats_flights} flights for {m.date} but MongoDB holds {m.flights_in_mongo}."
        )
    share = m.rejected_in_mongo / m.source_rows if m.source_rows else 0.0
    if share > max_rejected_share:
        problems.append(
            f"rejected share for {m.date} is {_pct(share)} ({m.rejected_in_mongo} of {m.source_rows} rows), above the "
            f"{_pct(max_rejected_share)} threshold; the reasons are in flights_rejected."
        )
    return problems


def measure(day: date, mongo, root=None) -> Measured:
    """Count everything the gates need, for one day (one read of the day's flights)."""
    from datacloud.pipelines import flights, land
    from datacloud.pipelines.ingest import reachable
    from datacloud.pipelines.validation import NATURAL_KEY, check_stored

    landed = land.snapshot(flights.DATASET, day, root)
    manifest = landed.manifest()
    carriers_ref = flights.landed_carriers(day, landed=landed)
    good, _ = flights.parse_lines(landed.lines("flights.jsonl", flights.MAX_LINE_BYTES), day, carriers_ref)
    key = day.isoformat()
    window = (
        (day - timedelta(days=NEIGHBOUR_DAYS)).isoformat(),
        (day + timedelta(days=NEIGHBOUR_DAYS)).isoformat(),
    )
    db = mongo.db
    with reachable(mongo.uri):
        docs = list(db[flights.FLIGHTS].find({"date": key}))
        rejected = db[flights.REJECTED].count_documents({"date": key})
        stats = list(
            db[flights.DELAY_STATS].find(
                {"date": {"$gte": window[0], "$lte": window[1]}}, {"date": 1, "carrier": 1, "flights": 1}
            )
        )
    keys = Counter(tuple(d.get(k) for k in NATURAL_KEY) for d in docs)
    invalid = [(d.get("_id"), reasons) for d in docs if (reasons := check_stored(d, day, carriers_ref))]
    around: dict[str, int] = {}
    for s in stats:
        if s.get("date") != key:
            around[s["date"]] = around.get(s["date"], 0) + int(s.get("flights") or 0)
    own = [s for s in stats if s.get("date") == key]
    return Measured(
        date=key,
        source_rows=manifest["files"]["flights.jsonl"]["lines"],
        good_landed=len(good),
        flights_in_mongo=len(docs),
        rejected_in_mongo=rejected,
        duplicate_keys=sum(1 for n in keys.values() if n > 1),
        carriers_flown=sorted({str(d["carrier"]) for d in docs if d.get("carrier") is not None}),
        stats_carriers=sorted(str(s.get("carrier")) for s in own),
        stats_flights=sum(int(s.get("flights") or 0) for s in own),
        invalid_docs=len(invalid),
        invalid_example=f"{invalid[0][0]}: {invalid[0][1][0]}" if invalid else "",
        neighbour_flights=dict(sorted(around.items())),
    )


def bounded(name: str, value: float, low: float, high: float) -> float:
    """A threshold inside its safe bounds: outside them it is set to the nearest bound, with a warning."""
    if low <= value <= high:
        return value
    used = min(max(value, low), high)
    log.warning("Quality | %s %s is outside its safe bounds %s .. %s; using %s", name, value, low, high, used)
    return used


def check(day: date, mongo, max_rejected_share: float, root=None, min_volume_ratio: float | None = None) -> dict[str, Any]:
    """Measure and evaluate; raise QualityError with every failed gate's sentence."""
    from datacloud.pipelines import flights

    share = bounded("max_rejected_share", max_rejected_share, *flights.MAX_REJECTED_SHARE_BOUNDS)
    ratio = flights.DEFAULT_MIN_VOLUME_RATIO if min_volume_ratio is None else min_volume_ratio
    ratio = bounded("min_volume_ratio", ratio, *flights.MIN_VOLUME_RATIO_BOUNDS)
    m = measure(day, mongo, root)
    problems = evaluate(m, share, ratio)
    if problems:
        for p in problems:
            log.error("Quality | %s", p)
        raise QualityError(" ".join(problems))
    volume = (
        f"{len(m.neighbour_flights)} days around it (median {statistics.median(m.neighbour_flights.values()):g})"
        if len(m.neighbour_flights) >= MIN_NEIGHBOURS
        else f"volume not judged: {len(m.neighbour_flights)} of the days around it loaded, {MIN_NEIGHBOURS} needed"
    )
    log.info(
        "Quality | %s passed: %d flights, %d rejected of %d source rows, %d carriers, no duplicate keys, "
        "every document valid; %s",
        m.date,
        m.flights_in_mongo,
        m.rejected_in_mongo,
        m.source_rows,
        len(m.carriers_flown),
        volume,
    )
    return m.as_dict()
