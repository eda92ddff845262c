"""Hostile lines in a drop are quarantined with a reason, never raised (issue 12, item 5).

Each kind once raised out of ``parse_lines`` (or made a quarantine document
MongoDB refuses), so the ingest task failed, was retried as transient and
failed again: the day was blocked for good.
"""

from __future__ import annotations

import json
from datetime import date

import bson
import pytest

from datacloud.pipelines import flights, land

DAY = date(2013, 1, 1)
CARRIERS = frozenset({"UA"})
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
MONGO_DOCUMENT_LIMIT = 16 * 1024 * 1024


def _line(record) -> bytes:
    return (json.dumps(record) + "\n").encode()


HOSTILE = {
    "a number of 5,000 digits": b'{"year": ' + b"1" * 5000 + b"}\n",
    "a year of 100 digits": _line({**GOOD, "year": 10**100}),
    "JSON nested 30,000 deep": b"[" * 30_000 + b"]" * 30_000 + b"\n",
    "a field nested 900 deep": _line({**GOOD, "tailnum": json.loads("[" * 900 + "]" * 900)}),
    "a line over the document limit": _line({**GOOD, "tailnum": "N" * (MONGO_DOCUMENT_LIMIT + 10)}),
    "a very long string value": _line({**GOOD, "carrier": "\u00e9" * 20_000}),
    "a distance over 64 bits (BSON cannot hold it)": _line({**GOOD, "flight": 7, "distance": 2**64}),
    "an air time over 64 bits": _line({**GOOD, "flight": 8, "air_time": 10**30}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_line_is_quarantined_with_a_bounded_document(name):
    good, rejected = flights.parse_lines([_line(GOOD), HOSTILE[name]], DAY, CARRIERS)
    assert [d["flight"] for d in good] == [1545]
    (doc,) = rejected
    assert doc["line"] == 2
    assert doc["reasons"] and all(isinstance(r, str) and 0 < len(r) <= flights.MAX_REASON_CHARS for r in doc["reasons"])
    assert len(doc["raw"]) <= flights.MAX_RAW_CHARS
    assert doc["bytes"] == len(HOSTILE[name].rstrip(b"\n"))
    size = len(bson.encode({**doc, "run_id": "x" * 250}))
    assert size < 64 * 1024 < MONGO_DOCUMENT_LIMIT  # the quarantine write can never be refused for its size


def test_line_length_is_capped_with_the_reason():
    _, (doc,) = flights.parse_lines([HOSTILE["a line over the document limit"]], DAY, CARRIERS)
    assert doc["reasons"] == [f"line is {doc['bytes']:,} bytes, over the limit of {flights.MAX_LINE_BYTES:,} bytes"]
    assert doc["raw"].startswith('{"year": 2013')
    assert doc["truncated"] is True


def test_each_hostile_kind_names_its_reason():
    lines = [HOSTILE[k] for k in ("a number of 5,000 digits", "a year of 100 digits", "JSON nested 30,000 deep")]
    _, rejected = flights.parse_lines(lines, DAY, CARRIERS)
    reasons = [r["reasons"][0] for r in rejected]
    assert reasons[0].startswith("line is not valid JSON (a number longer than")
    assert reasons[1] == f"year/month/day {10**100}-1-1 is not a calendar date"[: flights.MAX_REASON_CHARS]
    assert reasons[2] == "line is not valid JSON (nested too deeply)"


def test_landing_reads_a_huge_line_in_bounded_pieces(tmp_path, monkeypatch):
    """The landed file keeps the bytes as received; ingest reads at most the cap of any line."""
    huge = b'{"tailnum": "' + b"N" * (3 * flights.MAX_LINE_BYTES) + b'"}\n'
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / f"{DAY.isoformat()}.jsonl").write_bytes(_line(GOOD) + huge + _line({**GOOD, "flight": 7}))
    monkeypatch.setenv("DATACLOUD_FLIGHTS_DROP", str(drop))
    counts = flights.land(DAY, tmp_path / "landing")
    assert counts["flights"] == 3
    lines = list(land.read_lines(flights.DATASET, DAY, "flights.jsonl", tmp_path / "landing", flights.MAX_LINE_BYTES))
    assert [len(x) <= flights.MAX_LINE_BYTES + 1 for x in lines] == [True, True, True]
    good, (doc,) = flights.parse_lines(lines, DAY, flights.landed_carriers(DAY, tmp_path / "landing"))
    assert [d["flight"] for d in good] == [1545, 7]
    assert (doc["line"], doc["bytes"]) == (2, len(huge) - 1)
