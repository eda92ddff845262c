"""The vectorized validation of ingest gives what the per-record check gives, line for line (issue 13, item 5).

``parse_lines`` validates plain lines a block at a time (``validation.accept_block``:
pyarrow parses, numpy checks) and sends every line it does not accept through the
per-record check, which gives the reasons. ``vectorized=False`` is that per-record
check alone. Both must give the same documents (same BSON bytes) and the same
quarantine records (same reasons) for real days and for a corpus of broken lines.
"""

from __future__ import annotations

import json
import random
from datetime import date

import bson
import pytest

from datacloud.pipelines import flights, validation

DAY = date(2013, 1, 1)
CARRIERS = frozenset({"UA", "AA", "B6", "9E"})
GOOD = {
    "year": 2013,
    "month": 1,
    "day": 1,
    "dep_time": 517,
    "sched_dep_time": 515,
    "dep_delay": 2,
    "arr_time": 830,
    "sched_arr_time": 819,
    "arr_delay": 11,
    "carrier": "UA",
    "flight": 1545,
    "tailnum": "N14228",
    "origin": "EWR",
    "dest": "IAH",
    "air_time": 227,
    "distance": 1400,
    "hour": 5,
    "minute": 15,
    "time_hour": "2013-01-01T10:00:00Z",
}
INT_VALUES = [None, 0, -1, 1, 59, 60, 99, 100, 2359, 2360, 2400, 2401, 9999, 10000, 10**12, -(2**63), 2**63 - 1]
STR_VALUES = [
    None,
    "",
    "UA",
    "ua",
    "ZZ",
    "9E",
    "EWR",
    "EWRX",
    "JFK",
    "N14228",
    "N" * 11,
    "dep_time",
    "\u00c9WR",
    "2013-01-01T10:00:00Z",
]
UNTYPED_VALUES = [5.0, 5.5, "5", True, False, 10**20, 2**63, [], {}, [1], 1e300]
CANCELLED = {"dep_time": None, "dep_delay": None, "arr_time": None, "arr_delay": None, "air_time": None}


def _line(record) -> bytes:
    return (json.dumps(record) + "\n").encode()


def _typed_corpus() -> list[bytes]:
    """Lines pyarrow reads as rows (every value of its column's type, or null, or absent): the block rules decide."""
    lines = [_line(GOOD)]
    for n, key in enumerate(GOOD):
        values = STR_VALUES if isinstance(GOOD[key], str) else INT_VALUES
        for value in values:
            lines.append(_line({**GOOD, "flight": 1000 + n, key: value}))
        lines.append(_line({k: v for k, v in GOOD.items() if k != key}))
        lines.append(_line({**GOOD, "flight": 2000 + n}))
    # Out of range but consistent with the other fields: only the range rule itself can refuse these.
    for n, changes in enumerate(
        [
            {"dep_time": 560, "dep_delay": 45},  # 05:60
            {"arr_time": 860, "arr_delay": 41},
            {"sched_dep_time": 460, "hour": 4, "minute": 60, "dep_delay": 17, "time_hour": "2013-01-01T09:00:00Z"},
            {"sched_arr_time": 760, "arr_delay": 30},
            {"dep_time": 2410, "dep_delay": 1135},
            {"dep_time": 2400, "dep_delay": 1125},
            {"dep_time": 516, "dep_delay": 2881},
            {"dep_time": 515, "dep_delay": 2880},
            {"dep_time": 514, "dep_delay": -1441},
            {"dep_time": 515, "dep_delay": -1440},
            {"arr_time": 820, "arr_delay": 2881},
            {"arr_time": 818, "arr_delay": -1441},
            {"dep_time": 2359, "dep_delay": 1444},  # 1444 = 4 (mod 1440)
            {"flight": 10000},
            {"flight": 9999},
            {"flight": 0},
            {"distance": 1},
            {"distance": 0},
            {"air_time": 0},
            {"air_time": -1},
            {"tailnum": "N" * 10},
            {"tailnum": "N" * 11},
            {"tailnum": ""},
            {"tailnum": None},
            {"carrier": "U"},
            {"carrier": "9E"},
            {"origin": "JFK"},
            {"dest": "IA"},
            {"sched_dep_time": 2400, "hour": 24, "minute": 0},  # hour 24: no scheduled hour, a reason
            {
                "sched_dep_time": 2350,
                "hour": 23,
                "minute": 50,
                "dep_time": 30,
                "dep_delay": 40,
                "time_hour": "2013-01-02T04:00:00Z",
            },
            {"hour": 5, "minute": 16},
            {"hour": 6},
            {"year": 2014},
            {"day": 2},
            {"month": 2, "day": 30},
            {**CANCELLED},
            {**CANCELLED, "tailnum": None},
            {"dep_time": None, "dep_delay": None, "arr_delay": None},  # an arrival without a departure
            {"dep_time": None},
            {"dep_delay": None},
            {"arr_time": None},
            {"arr_delay": None},
            {"dep_time": None, "arr_time": None, "arr_delay": None, "air_time": None},  # a delay without a departure
            {"dep_time": 515, "dep_delay": None},
            {"sched_dep_time": 2400, "hour": 24, "minute": 0, "dep_time": 2400, "dep_delay": 0},
            {"sched_dep_time": 15, "hour": None, "minute": 15, "dep_time": 17, "time_hour": "2013-01-01T05:00:00Z"},
            {"sched_dep_time": 500, "hour": 5, "minute": None, "dep_time": 502, "time_hour": "2013-01-01T10:00:00Z"},
        ]
    ):
        lines.append(_line({**GOOD, "flight": 6000 + n, **changes}))
    for absent in (("tailnum",), tuple(CANCELLED), ("hour", "minute"), ("hour",)):  # absent, not null
        record = {**GOOD, "flight": 3000 + len(lines), **{k: None for k in CANCELLED}}
        lines.append(_line({k: v for k, v in record.items() if k not in absent}))
    for text in (
        "2013-01-01T10:00:00+00:00",
        "2013-01-01 10:00:00Z",
        "2013-01-01T10:00Z",
        "2013-01-01T10:00:00.000Z",
        "2013-01-01T10Z",
        "2013-01-01T05:00:00Z",
        "2013-01-01T10:00:00z",
        "20130101T100000Z",
        "",
    ):
        lines.append(_line({**GOOD, "flight": 3100 + len(lines), "time_hour": text}))
    body = _line({**GOOD, "flight": 4000}).rstrip(b"\n")
    lines += [
        body.replace(b'"flight"', b'"fl\\u0069ght"') + b"\n",  # an escaped key
        body.replace(b'"tailnum": "N14228"', b'"t\\u0061ilnum": null') + b"\n",
        body.replace(b'"UA"', b'"\\u0055A"') + b"\n",  # an escaped value
        b"  " + body + b"  \n",
        body + b"\r\n",
        body.replace(b", ", b",\r") + b"\n",
        _line({**GOOD, "flight": 4002}),
        _line({**GOOD, "flight": 4002}),  # a duplicate of the line before
    ]
    lines += [_line({**GOOD, "flight": 5000 + i}) for i in range(200)]
    return lines


def _unreadable_corpus() -> list[bytes]:
    """Lines the block path cannot read (other types, not JSON, not UTF-8, ...): the per-record check decides."""
    lines = []
    for n, key in enumerate(GOOD):
        for value in UNTYPED_VALUES:
            lines.append(_line({**GOOD, "flight": 1000 + n, key: value}))
    body = _line({**GOOD, "flight": 4000}).rstrip(b"\n")
    lines += [
        body[:-1] + b', "flight": "x"}\n',
        body[:-1] + b', "flight": 4001}\n',  # a key twice: the last one counts (pyarrow refuses it)
        body[:-1] + b', "extra": 1}\n',
        body.replace(b'"N14228"', b'"\\ud800"') + b"\n",  # a lone surrogate
        body.replace(b'"N14228"', b'"N1\xff"') + b"\n",  # not UTF-8
        body.replace(b"1545", b"NaN") + b"\n",
        body.replace(b"1400", b"1.4e3") + b"\n",
        body.replace(b"1400", b"01400") + b"\n",
        body + body + b"\n",  # two objects on a line
        body[:-1] + b"\n",
        b"[" + body + b"]\n",
        b"\n",
        b"   \n",
        b"null\n",
        b'{"year": ' + b"1" * 5000 + b"}\n",
        b"[" * 30_000 + b"]" * 30_000 + b"\n",
        body[:-1] + b', "x": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
        _line({**GOOD, "tailnum": "N" * (flights.MAX_LINE_BYTES + 10)}),
    ]
    rng = random.Random(13)
    for _ in range(400):  # random byte damage to good lines
        raw = bytearray(_line({**GOOD, "flight": rng.randint(1, 9999)}).rstrip(b"\n"))
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.choice(b'0123456789{}[]",:. -eE\\ANZaz\x00\xff')
        lines.append(bytes(raw) + b"\n")
    return lines


def _both(lines, day, carriers):
    stats: dict[str, int] = {}
    fast = flights.parse_lines(lines, day, carriers, stats=stats)
    slow = flights.parse_lines(lines, day, carriers, vectorized=False)
    return fast, slow, stats


def _same(fast, slow) -> None:
    (good, rejected), (good_ref, rejected_ref) = fast, slow
    assert [bson.encode(d) for d in good] == [bson.encode(d) for d in good_ref]
    assert rejected == rejected_ref


def test_lines_the_block_rules_decide_get_the_same_documents_and_reasons_both_ways():
    lines = _typed_corpus()
    assert validation.accept_block([x.rstrip(b"\r\n").strip() for x in lines], DAY, CARRIERS) is not None  # one block
    fast, slow, stats = _both(lines, DAY, CARRIERS)
    _same(fast, slow)
    assert len(fast[0]) > 200 and len(fast[1]) > 250  # the corpus exercises both outcomes
    assert stats["vectorized"] > 200


def test_unreadable_lines_and_mixtures_get_the_same_documents_and_reasons_both_ways():
    unreadable = _unreadable_corpus()
    _same(*_both(unreadable, DAY, CARRIERS)[:2])
    mixed = _typed_corpus() + unreadable
    random.Random(5).shuffle(mixed)
    fast, slow, stats = _both(mixed, DAY, CARRIERS)
    _same(fast, slow)
    assert stats["vectorized"] > 40  # blocks between unreadable lines still go together


@pytest.mark.parametrize("day", [date(2013, 1, 1), date(2013, 3, 10), date(2013, 11, 3), date(2013, 12, 31)])
def test_real_days_take_the_block_path_whole_and_give_the_same_documents(day):
    """Every real row is accepted by the block path (none needs the per-record check), DST days included."""
    frame, _, airlines = flights.source_frames(day)
    integral = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")
    lines = list(flights._frame_lines(frame, flights.FLIGHT_COLUMNS, integral))
    (good, rejected), (good_ref, rejected_ref), stats = _both(lines, day, frozenset(airlines["carrier"]))
    assert rejected == rejected_ref == []
    assert [bson.encode(d) for d in good] == [bson.encode(d) for d in good_ref]
    assert stats == {"vectorized": len(lines), "per_record": 0}


def test_a_bad_line_in_a_block_sends_only_itself_the_long_way():
    lines = [_line({**GOOD, "flight": n}) for n in range(1, 301)]
    lines[150] = b'{"year": 2013, "flight": oops}\n'
    good, rejected = flights.parse_lines(lines, DAY, CARRIERS, stats=(stats := {}))
    assert len(good) == 299
    assert [r["line"] for r in rejected] == [151]
    assert rejected[0]["reasons"][0].startswith("line is not valid JSON")
    assert stats["per_record"] <= 4  # halving isolates the unreadable line (blocks of 2 or fewer go line by line)
