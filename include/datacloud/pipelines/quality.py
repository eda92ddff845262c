"""Quality gates for one day: measured numbers in, one sentence per failed gate out.

The numbers are measured independently of what ingest reported: good rows are
recounted by validating the landed file again, everything else is counted in
MongoDB. ``evaluate`` is pure (unit-tested); ``measure`` does the I/O.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from datacloud.errors import UserError

log = logging.getLogger(__name__)


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def evaluate(m: Measured, max_rejected_share: float) -> list[str]:
    """The failed gates, one sentence each naming the number that is off (empty: all pass)."""
    problems: list[str] = []
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
    """Count everything the gates need, for one day."""
    from datacloud.pipelines import flights, land
    from datacloud.pipelines.ingest import reachable
    from datacloud.pipelines.validation import NATURAL_KEY

    landed = land.snapshot(flights.DATASET, day, root)
    manifest = landed.manifest()
    lines = landed.lines("flights.jsonl", flights.MAX_LINE_BYTES)
    good, _ = flights.parse_lines(lines, day, flights.landed_carriers(day, landed=landed))
    key = day.isoformat()
    db = mongo.db
    with reachable(mongo.uri):
        in_mongo = db[flights.FLIGHTS].count_documents({"date": key})
        rejected = db[flights.REJECTED].count_documents({"date": key})
        dups = list(
            db[flights.FLIGHTS].aggregate(
                [
                    {"$match": {"date": key}},
                    {"$group": {"_id": {k: f"${k}" for k in NATURAL_KEY}, "n": {"$sum": 1}}},
                    {"$match": {"n": {"$gt": 1}}},
                ]
            )
        )
        carriers = sorted(db[flights.FLIGHTS].distinct("carrier", {"date": key}))
        stats = list(db[flights.DELAY_STATS].find({"date": key}, {"carrier": 1, "flights": 1}))
    return Measured(
        date=key,
        source_rows=manifest["files"]["flights.jsonl"]["lines"],
        good_landed=len(good),
        flights_in_mongo=in_mongo,
        rejected_in_mongo=rejected,
        duplicate_keys=len(dups),
        carriers_flown=carriers,
        stats_carriers=sorted(d.get("carrier") for d in stats),
        stats_flights=sum(int(d.get("flights") or 0) for d in stats),
    )


def check(day: date, mongo, max_rejected_share: float, root=None) -> dict[str, Any]:
    """Measure and evaluate; raise QualityError with every failed gate's sentence."""
    m = measure(day, mongo, root)
    problems = evaluate(m, max_rejected_share)
    if problems:
        for p in problems:
            log.error("Quality | %s", p)
        raise QualityError(" ".join(problems))
    log.info(
        "Quality | %s passed: %d flights, %d rejected of %d source rows, %d carriers, no duplicate keys",
        m.date,
        m.flights_in_mongo,
        m.rejected_in_mongo,
        m.source_rows,
        len(m.carriers_flown),
    )
    return m.as_dict()
