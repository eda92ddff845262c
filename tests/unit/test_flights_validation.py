"""Validation rules, deterministic ids and line parsing of the flights pipeline (no services)."""

from __future__ import annotations

import json
from datetime import UTC, date

import pytest

from datacloud.pipelines.flights import _frame_lines, day_of, parse_lines, source_frames
from datacloud.pipelines.validation import flight_id, validate_flight

DAY = date(2013, 1, 1)
CARRIERS = frozenset({"UA", "AA", "B6"})
GOOD = {
    "year": 2013, "month": 1, "day": 1, "dep_time": 517, "sched_dep_time": 515, "dep_delay": 2, "arr_time": 830,
    "sched_arr_time": 819, "arr_delay": 11, "carrier": "UA", "flight": 1545, "tailnum": "N14228", "origin": "EWR",
    "dest": "IAH", "air_time": 227, "distance": 1400, "hour": 5, "minute": 15, "time_hour": "2013-01-01T10:00:00Z",
}


def check(**changes):
    record = {**GOOD, **changes}
    for key, value in list(changes.items()):
        if value is KeyError:
            del record[key]
    return validate_flight(record, DAY, CARRIERS)


def test_good_record_becomes_typed_document_with_natural_key_id():
    checked = check()
    assert checked.ok, checked.reasons
    doc = checked.doc
    assert doc["_id"] == "2013-01-01/UA/1545/EWR/0515"
    assert doc["date"] == "2013-01-01"
    assert list(doc)[:3] == ["_id", "date", "year"]
    assert doc["time_hour"].isoformat() == "2013-01-01T10:00:00"
    assert isinstance(doc["dep_delay"], int)


def test_integral_floats_are_accepted_as_ints():
    checked = check(dep_time=517.0, dep_delay=2.0, distance=1400.0)
    assert checked.ok
    assert checked.doc["distance"] == 1400
    assert isinstance(checked.doc["distance"], int)


def test_cancelled_flight_is_valid():
    checked = check(dep_time=None, dep_delay=None, arr_time=None, arr_delay=None, air_time=None, tailnum=None)
    assert checked.ok, checked.reasons


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"distance": -5}, "distance must be > 0 miles (got -5)"),
        ({"distance": "1400"}, "distance must be a whole number (got '1400')"),
        ({"dep_delay": "late"}, "dep_delay must be a whole number or null (got 'late')"),
        ({"flight": True}, "flight must be a whole number (got True)"),
        ({"carrier": "ZZ"}, "carrier ZZ is not in the airlines reference"),
        ({"carrier": KeyError}, "missing field carrier"),
        ({"origin": "ewr"}, "origin must be a three-letter IATA code (got 'ewr')"),
        ({"day": 2}, "date 2013-01-02 is not the run's day 2013-01-01"),
        ({"month": 2, "day": 30}, "year/month/day 2013-2-30 is not a calendar date"),
        ({"sched_dep_time": 575}, "sched_dep_time must be a clock time HHMM between 0000 and 2400 (got 575)"),
        ({"dep_delay": 3000}, "dep_delay must be between -1440 and 2880 minutes (got 3000)"),
        ({"air_time": -1}, "air_time must be >= 0 minutes (got -1)"),
        ({"dep_delay": 5}, "dep_delay 5 does not match dep_time 0517 - sched_dep_time 0515"),
        ({"arr_delay": 12}, "arr_delay 12 does not match arr_time 0830 - sched_arr_time 0819"),
        ({"dep_time": None}, "dep_time and dep_delay must both be set or both be null (null means cancelled)"),
        ({"arr_time": None}, "arr_delay is set but arr_time is null"),
        ({"minute": 16}, "hour/minute 5:16 do not match sched_dep_time 0515"),
        ({"time_hour": "2013-01-01T11:00:00Z"}, "time_hour 2013-01-01T11:00:00Z is not the scheduled hour 2013-01-01T10:00:00Z"),
        ({"time_hour": "yesterday"}, "time_hour must be an ISO time in UTC like 2013-01-01T10:00:00Z (got 'yesterday')"),
        ({"tailnum": 42}, "tailnum must be null or 1-10 capital letters and digits (got 42)"),
    ],
)
def test_each_rule_names_the_field_and_value(changes, expected):
    checked = check(**changes)
    assert not checked.ok
    assert expected in checked.reasons


def test_several_missing_keys_are_listed_together():
    record = {k: v for k, v in GOOD.items() if k not in ("flight", "origin")}
    checked = validate_flight(record, DAY, CARRIERS)
    assert checked.reasons == ["missing fields flight, origin"]


def test_not_an_object():
    assert validate_flight([1, 2], DAY, CARRIERS).reasons == ["record must be a JSON object (got list)"]


def test_ids_are_deterministic_and_distinguish_every_key_part():
    base = (2013, 1, 1, "UA", 1545, "EWR", 515)
    assert flight_id(*base) == flight_id(*base)
    variants = {flight_id(*base)}
    for i, other in enumerate((2014, 2, 2, "AA", 1546, "JFK", 516)):
        key = list(base)
        key[i] = other
        variants.add(flight_id(*key))
    assert len(variants) == 8


def test_every_flight_of_a_real_day_passes_and_ids_are_unique():
    flights, _, airlines = source_frames(date(2013, 3, 10))  # the day clocks moved to summer time
    lines = list(_frame_lines(flights, tuple(flights.columns), ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")))
    good, rejected = parse_lines(lines, date(2013, 3, 10), frozenset(airlines["carrier"]))
    assert rejected == []
    assert len(good) == len(flights) == len({d["_id"] for d in good})


def test_parse_lines_quarantines_malformed_lines_with_reasons():
    good_line = (json.dumps(GOOD) + "\n").encode()
    lines = [
        good_line,
        good_line,  # same natural key again
        b'{"year": 2013, \xff\xfe broken}\n',
        b"not json\n",
        b"\n",
        (json.dumps({**GOOD, "flight": 7, "distance": -3}) + "\n").encode(),
    ]
    good, rejected = parse_lines(lines, DAY, CARRIERS)
    assert [d["_id"] for d in good] == ["2013-01-01/UA/1545/EWR/0515"]
    by_line = {r["line"]: r for r in rejected}
    assert sorted(by_line) == [2, 3, 4, 5, 6]
    assert by_line[2]["reasons"] == ["duplicate of line 1 (same year/month/day/carrier/flight/origin/sched_dep_time)"]
    assert by_line[3]["reasons"] == ["line is not valid UTF-8 (byte 15)"]
    assert "\\xff" in by_line[3]["raw"]
    assert by_line[4]["reasons"][0].startswith("line is not valid JSON")
    assert by_line[5]["reasons"] == ["line is empty"]
    assert by_line[6]["reasons"] == ["distance must be > 0 miles (got -3)"]
    assert by_line[6]["_id"] == "2013-01-01/line-000006"
    assert by_line[6]["date"] == "2013-01-01"


def test_day_is_the_data_interval_start():
    from datetime import datetime, timedelta

    start = datetime(2013, 1, 5, tzinfo=UTC)
    assert day_of(start, start + timedelta(days=1)) == date(2013, 1, 5)


@pytest.mark.parametrize(
    ("start", "hours", "message"),
    [
        ((2013, 1, 5, 6), 24, "not at midnight"),
        ((2013, 1, 5), 48, "is not one day"),
        ((2014, 1, 1), 24, "there is no flights data for 2014-01-01"),
    ],
)
def test_day_of_refuses_odd_intervals(start, hours, message):
    from datetime import datetime, timedelta

    from datacloud.errors import UserError

    begin = datetime(*start, tzinfo=UTC)
    with pytest.raises(UserError, match=message):
        day_of(begin, begin + timedelta(hours=hours))
