"""The flights pipeline against a real FerretDB and local Spark.

* ``dag.test()`` runs (in one child process with its own AIRFLOW_HOME, so the
  Airflow DB and the JVM are its own): one day end to end, the same day again
  (MongoDB must stay byte-for-byte the same), and a day whose drop carries
  malformed rows (quarantined with reasons; over the 1 % threshold the run
  fails and says the share);
* ``kill -9`` of an ingest mid-way, then a rerun: exact counts, no duplicates;
* MongoDB down: one sentence naming the server, as a retryable error.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pymongo
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import monitoring

from datacloud.config import REPO_ROOT
from datacloud.pipelines import flights
from datacloud.pipelines.ingest import MARKS, Mongo, MongoUnreachable, connect
from datacloud.pipelines.validation import NATURAL_KEY

DAY1 = date(2013, 1, 1)  # 842 departures
DAY2 = date(2013, 1, 2)  # 943 departures, plus the injected bad rows
COLLECTIONS = (flights.FLIGHTS, flights.REJECTED, flights.DELAY_STATS, flights.ORIGIN_WEATHER)

# Runs dag.test() for each spec; prints one RESULT line with run states and MongoDB fingerprints.
RUNNER = r"""
import hashlib, json, os, sys
from datetime import datetime
import pymongo
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(dag_folder=sys.argv[1]).dags["etl_flights_daily"]
db = pymongo.MongoClient(os.environ["DATACLOUD_MONGO_URI"]).get_default_database()
raw = CodecOptions(document_class=RawBSONDocument)
out = {}
for spec in json.loads(sys.argv[2]):
    os.environ.pop("DATACLOUD_FLIGHTS_DROP", None)
    os.environ.update(spec.get("env", {}))
    run = dag.test(logical_date=datetime.fromisoformat(spec["logical_date"]))
    prints = {}
    for name in ("flights", "flights_rejected", "daily_delay_stats", "daily_origin_weather"):
        docs = sorted((d["_id"], hashlib.sha256(d.raw).hexdigest()) for d in db[name].with_options(codec_options=raw).find())
        prints[name] = hashlib.sha256(json.dumps(docs).encode()).hexdigest()
    out[spec["name"]] = {
        "state": str(run.state),
        "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()},
        "fingerprint": prints,
    }
print("RESULT " + json.dumps(out), flush=True)
"""


def _db_uri(ferretdb) -> str:
    return f"mongodb://127.0.0.1:{ferretdb.mongo_port}/flights_it_{uuid.uuid4().hex[:10]}"


def _env(ferretdb, tmp_path: Path, uri: str) -> dict[str, str]:
    env = {**os.environ, **ferretdb.env()}
    database = uri.rsplit("/", 1)[1]
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        DATACLOUD_DATA_DIR=str(tmp_path / "data"),
        DATACLOUD_MONGO_URI=uri,
        AIRFLOW_CONN_DATACLOUD_MONGO=json.dumps(
            {"conn_type": "mongo", "host": "127.0.0.1", "port": ferretdb.mongo_port, "schema": database}
        ),
        DATACLOUD_SPARK_TARGET="local",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("DATACLOUD_FLIGHTS_DROP", None)
    return env


def _bad_lines(day: date) -> list[bytes]:
    """Two of each kind of malformed row the issue names (12 rows)."""
    flights_df, _, _ = flights.source_frames(day)
    cols = flights.FLIGHT_COLUMNS
    real = [
        json.loads(line)
        for line in flights._frame_lines(flights_df.head(4), cols, ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"))
    ]
    bad = []
    for i, row in enumerate(real[:2]):
        bad.append({**row, "flight": 9000 + i, "distance": "far"})  # wrong type
        bad.append({**row, "flight": 9100 + i, "distance": -100})  # negative distance
        bad.append({**row, "flight": 9200 + i, "carrier": "ZZ"})  # unknown carrier
        bad.append({k: v for k, v in row.items() if k not in ("flight", "origin")})  # missing keys
        bad.append({**row, "flight": 9300 + i, "dep_delay": "late"})  # wrong type
    lines = [(json.dumps(b) + "\n").encode() for b in bad]
    lines.append(b'{"year": 2013, "carrier": "\xff\xfeUA"}\n')  # not UTF-8
    lines.append(b'{"year": 2013, "carrier": "B6", "flight": \x80}\n')
    return lines


def _real_lines(day: date) -> list[bytes]:
    """The day's rows as the land task writes them."""
    flights_df, _, _ = flights.source_frames(day)
    return list(
        flights._frame_lines(flights_df, flights.FLIGHT_COLUMNS, ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"))
    )


def _write_drop(folder: Path, day: date) -> int:
    """The day's real rows with the bad ones mixed in; returns the number of bad rows."""
    good = _real_lines(day)
    bad = _bad_lines(day)
    mixed = good[:100] + bad + good[100:]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{day.isoformat()}.jsonl").write_bytes(b"".join(mixed))
    return len(bad)


def _day1_ingested(ferretdb, tmp_path: Path, monkeypatch):
    """2013-01-01 landed and ingested once into a database of its own; returns the client."""
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    flights.land(DAY1)
    mongo = connect(_db_uri(ferretdb))
    flights.ingest(DAY1, "r1", mongo)
    return mongo


def _snapshot(db) -> dict[str, dict[str, str]]:
    raw = CodecOptions(document_class=RawBSONDocument)
    return {
        name: {d["_id"]: hashlib.sha256(d.raw).hexdigest() for d in db[name].with_options(codec_options=raw).find()}
        for name in COLLECTIONS
    }


def test_dag_runs_one_day_reruns_identically_and_quarantines_bad_rows(ferretdb, tmp_path):
    uri = _db_uri(ferretdb)
    env = _env(ferretdb, tmp_path, uri)
    drop = tmp_path / "drop"
    n_bad = _write_drop(drop, DAY2)
    migrate = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    # A manual run at D+1 00:00 covers the day D (its data interval is the day before).
    specs = [
        {"name": "first", "logical_date": "2013-01-02T00:00:00+00:00"},
        {"name": "again", "logical_date": "2013-01-02T00:00:00+00:00"},
        {"name": "bad", "logical_date": "2013-01-03T00:00:00+00:00", "env": {"DATACLOUD_FLIGHTS_DROP": str(drop)}},
    ]
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(REPO_ROOT / "dags" / "etl_flights_daily.py"), json.dumps(specs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    output = proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-5000:]
    result = json.loads(lines[-1][len("RESULT ") :])

    first, again, bad = result["first"], result["again"], result["bad"]
    assert first["state"] == "success", first
    assert again["state"] == "success", again
    assert first["fingerprint"] == again["fingerprint"]  # re-running the day changed no byte in MongoDB
    assert "read 842, good 842, rejected 0, upserted 0, unchanged 842, removed 0 (unchanged" in output

    db = pymongo.MongoClient(uri).get_default_database()
    day1 = DAY1.isoformat()
    assert db.flights.count_documents({"date": day1}) == 842
    stats = list(db.daily_delay_stats.find({"date": day1}))
    assert sorted(s["carrier"] for s in stats) == sorted(db.flights.distinct("carrier", {"date": day1}))
    assert sum(s["flights"] for s in stats) == 842
    ua = next(s for s in stats if s["carrier"] == "UA")
    ua_delays = [d["dep_delay"] for d in db.flights.find({"date": day1, "carrier": "UA", "dep_delay": {"$ne": None}})]
    assert ua["mean_dep_delay"] == pytest.approx(sum(ua_delays) / len(ua_delays), abs=1e-4)
    assert ua["carrier_name"] == "United Air Lines Inc."
    origins = {o["origin"]: o for o in db.daily_origin_weather.find({"date": day1})}
    assert sorted(origins) == ["EWR", "JFK", "LGA"]
    assert all(o["weather_hours"] > 0 and o["mean_visib"] is not None for o in origins.values())

    # The bad day: good rows in, bad rows quarantined with reasons, and the run fails on the share.
    day2 = DAY2.isoformat()
    assert bad["state"] == "failed", bad
    assert bad["tasks"]["ingest"] == "success"
    assert bad["tasks"]["transform"] == "success"
    assert bad["tasks"]["quality"] == "failed"
    assert db.flights.count_documents({"date": day2}) == 943
    rejected = list(db.flights_rejected.find({"date": day2}))
    assert len(rejected) == n_bad == 12
    reasons = " | ".join(r for doc in rejected for r in doc["reasons"])
    for expected in (
        "distance must be a whole number (got 'far')",
        "distance must be > 0 miles (got -100)",
        "carrier ZZ is not in the airlines reference",
        "missing fields flight, origin",
        "dep_delay must be a whole number or null (got 'late')",
        "line is not valid UTF-8",
    ):
        assert expected in reasons
    assert all(doc["run_id"].startswith("manual__") and doc["raw"] for doc in rejected)
    share = f"{12 / (943 + 12) * 100:.2f} %"
    assert f"rejected share for {day2} is {share} (12 of 955 rows), above the 1.00 % threshold" in output


def test_kill_9_mid_ingest_then_rerun_has_exact_counts(ferretdb, tmp_path, monkeypatch):
    uri = _db_uri(ferretdb)
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    flights.land(DAY1)
    child = r"""
import logging, sys
from datetime import date, timedelta
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from datacloud.pipelines import flights
from datacloud.pipelines.ingest import connect
flights.ingest(date(2013, 1, 1), "run-killed", connect(sys.argv[1]), batch_size=1)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "include"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", child, uri], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if b"flights batch 100:" in line or time.monotonic() > deadline:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-ingest: after the 100th single-document batch
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    db = pymongo.MongoClient(uri).get_default_database()
    partial = db.flights.count_documents({"date": DAY1.isoformat()})
    assert 100 <= partial < 842

    mongo = connect(uri)
    counts = flights.ingest(DAY1, "run-again", mongo)
    assert (counts["read"], counts["good"], counts["rejected"]) == (842, 842, 0)
    # What the killed run wrote is found in MongoDB and kept; only the rest is written.
    assert (counts["upserted"], counts["unchanged"], counts["removed"]) == (842 - partial, partial, 0)
    assert db.flights.count_documents({"date": DAY1.isoformat()}) == 842
    dups = list(
        db.flights.aggregate(
            [
                {"$group": {"_id": {k: f"${k}" for k in NATURAL_KEY}, "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
            ]
        )
    )
    assert dups == []
    before = _snapshot(db)
    third = flights.ingest(DAY1, "run-again", mongo)
    assert (third["upserted"], third["unchanged"], third["removed"]) == (0, 842, 0)
    assert _snapshot(db) == before


def test_changed_drop_replaces_the_day(ferretdb, tmp_path, monkeypatch):
    """A corrected drop: changed rows rewritten, vanished rows removed, the rest untouched."""
    mongo = _day1_ingested(ferretdb, tmp_path, monkeypatch)
    landed = tmp_path / "data" / "landing" / "flights" / f"date={DAY1.isoformat()}" / "flights.jsonl"
    rows = [json.loads(line) for line in landed.read_bytes().splitlines()]
    rows[0]["tailnum"] = "N999ZZ"
    del rows[1]
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / f"{DAY1.isoformat()}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("DATACLOUD_FLIGHTS_DROP", str(drop))
    assert flights.land(DAY1)["flights"] == 841
    counts = flights.ingest(DAY1, "r2", mongo)
    assert (counts["good"], counts["upserted"], counts["unchanged"], counts["removed"]) == (841, 1, 840, 1)
    db = mongo.db
    assert db.flights.count_documents({"date": DAY1.isoformat()}) == 841
    assert db.flights.find_one({"tailnum": "N999ZZ"})["_id"].startswith("2013-01-01/")


def test_mongodb_down_is_one_retryable_sentence(tmp_path, monkeypatch):
    from datacloud.errors import TransientError
    from datacloud.localstack import free_port

    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATACLOUD_MONGO_TIMEOUT_MS", "500")
    flights.land(DAY1)
    port = free_port()  # nothing listens here
    mongo = connect(f"mongodb://flights:s3cret@127.0.0.1:{port}/datacloud")
    with pytest.raises(MongoUnreachable) as caught:
        flights.ingest(DAY1, "run", mongo)
    message = str(caught.value)
    assert message.startswith(f"MongoDB at mongodb://127.0.0.1:{port}/datacloud is unreachable (")
    assert "s3cret" not in message
    assert "\n" not in message
    assert isinstance(caught.value, TransientError)  # the task's retries with backoff apply
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_week_table_weights_daily_means_by_flown_legs(ferretdb):
    from datacloud.mainjob import week_table

    db = pymongo.MongoClient(_db_uri(ferretdb)).get_default_database()
    base = {"carrier": "UA", "carrier_name": "United Air Lines Inc.", "cancelled": 0}
    db.daily_delay_stats.insert_many(
        [
            {
                **base,
                "_id": "2013-01-01/UA",
                "date": "2013-01-01",
                "flights": 10,
                "departed": 10,
                "arrived": 10,
                "mean_dep_delay": 10.0,
                "mean_arr_delay": 0.0,
                "delayed_15_share": 0.5,
            },
            {
                **base,
                "_id": "2013-01-02/UA",
                "date": "2013-01-02",
                "flights": 31,
                "cancelled": 1,
                "departed": 30,
                "arrived": 29,
                "mean_dep_delay": 2.0,
                "mean_arr_delay": 4.0,
                "delayed_15_share": 0.1,
            },
            {
                **base,
                "_id": "2013-01-09/UA",
                "date": "2013-01-09",
                "flights": 99,
                "departed": 99,
                "arrived": 99,
                "mean_dep_delay": 99.0,
                "mean_arr_delay": 99.0,
                "delayed_15_share": 1.0,
            },  # outside the week
        ]
    )
    table, text = week_table(db, date(2013, 1, 1), date(2013, 1, 7))
    (ua,) = table
    assert (ua["days"], ua["flights"], ua["cancelled"]) == (2, 41, 1)
    assert ua["mean_dep_delay"] == pytest.approx((10 * 10 + 2 * 30) / 40)
    assert ua["mean_arr_delay"] == pytest.approx((0 * 10 + 4 * 29) / 39)
    assert ua["delayed_15_share"] == pytest.approx((5 + 3) / 40)
    assert "UA      United Air Lines Inc." in text
    assert "20.0 %" in text


def test_hostile_lines_are_quarantined_and_the_day_ingests(ferretdb, tmp_path, monkeypatch):
    """A number of 5,000 digits, JSON nested 30,000 deep, a year of 100 digits, a 17 MiB line (issue 12, item 5)."""
    uri = _db_uri(ferretdb)
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    good = _real_lines(DAY1)
    row = json.loads(good[0])
    hostile = [
        b'{"year": ' + b"1" * 5000 + b"}\n",
        b"[" * 30_000 + b"]" * 30_000 + b"\n",
        (json.dumps({**row, "year": 10**100}) + "\n").encode(),
        (json.dumps({**row, "tailnum": "N" * (17 * 1024 * 1024)}) + "\n").encode(),
    ]
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / f"{DAY1.isoformat()}.jsonl").write_bytes(b"".join(good[:10] + hostile + good[10:]))
    monkeypatch.setenv("DATACLOUD_FLIGHTS_DROP", str(drop))
    assert flights.land(DAY1)["flights"] == 842 + 4
    counts = flights.ingest(DAY1, "run-hostile", connect(uri))
    assert (counts["good"], counts["rejected"]) == (842, 4)
    db = pymongo.MongoClient(uri).get_default_database()
    rejected = sorted(db.flights_rejected.find({"date": DAY1.isoformat()}), key=lambda d: d["line"])
    assert [d["line"] for d in rejected] == [11, 12, 13, 14]
    assert all(d["reasons"] and len(d["raw"]) <= flights.MAX_RAW_CHARS for d in rejected)
    assert rejected[3]["reasons"][0].startswith("line is 17,")
    assert rejected[3]["truncated"] is True


def test_rerun_repairs_documents_changed_or_deleted_in_mongodb(ferretdb, tmp_path, monkeypatch):
    """The re-run compares with the stored documents, not with its own bookkeeping (issue 12, item 4)."""
    mongo = _day1_ingested(ferretdb, tmp_path, monkeypatch)
    db = mongo.db
    before = _snapshot(db)
    ids = sorted(before[flights.FLIGHTS])
    db.flights.update_one({"_id": ids[0]}, {"$set": {"tailnum": "N666XX"}})  # edited by hand
    db.flights.delete_one({"_id": ids[1]})  # deleted by hand
    db.flights.insert_one({"_id": "2013-01-01/ZZ/1/EWR/0500", "date": DAY1.isoformat()})  # a stray of the day
    counts = flights.ingest(DAY1, "r2", mongo)
    assert (counts["upserted"], counts["unchanged"], counts["removed"]) == (2, 840, 1)
    assert _snapshot(db)[flights.FLIGHTS] == before[flights.FLIGHTS]  # byte for byte the landed day again
    again = flights.ingest(DAY1, "r3", mongo)
    assert (again["upserted"], again["unchanged"], again["removed"]) == (0, 842, 0)


DAY9 = date(2013, 1, 9)  # 902 departures; the median of the 14 days around it is 907.5


def _gated_day(uri: str, tmp_path: Path, monkeypatch, lines: list[bytes] | None, tamper=None, **check) -> str:
    """Land ``lines`` (None: the real day) as 2013-01-09, ingest, write its stats as the Spark job would, run the gates.

    The days around it get their real volumes in ``daily_delay_stats``. Returns "" when the
    gates pass, else the QualityError's message.
    """
    from collections import Counter

    from datacloud.pipelines import quality

    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    if lines is not None:
        drop = tmp_path / "drop"
        drop.mkdir(exist_ok=True)
        (drop / f"{DAY9.isoformat()}.jsonl").write_bytes(b"".join(lines))
        monkeypatch.setenv("DATACLOUD_FLIGHTS_DROP", str(drop))
    flights.land(DAY9)
    mongo = connect(uri)
    flights.ingest(DAY9, "gates", mongo)
    db = mongo.db
    if tamper:
        tamper(db)
    stats = [
        {"_id": f"{DAY9}/{c}", "date": DAY9.isoformat(), "carrier": c, "flights": n}
        for c, n in Counter(d["carrier"] for d in db.flights.find({"date": DAY9.isoformat()})).items()
    ]
    per_day = flights.source_frames  # the real volumes of the days around it
    for k in range(-7, 8):
        if k:
            day = DAY9 + timedelta(days=k)
            stats.append({"_id": f"{day}/UA", "date": day.isoformat(), "carrier": "UA", "flights": len(per_day(day)[0])})
    db.daily_delay_stats.delete_many({})
    db.daily_delay_stats.insert_many(stats)
    try:
        quality.check(DAY9, mongo, **check)
    except quality.QualityError as exc:
        return str(exc)
    return ""


def test_quality_gates_pass_a_legit_day(ferretdb, tmp_path, monkeypatch):
    assert _gated_day(_db_uri(ferretdb), tmp_path, monkeypatch, None, max_rejected_share=0.01) == ""


@pytest.mark.parametrize(
    ("case", "share", "expected"),
    [
        ("empty", 0.01, "there are no flights for 2013-01-09 in MongoDB (0 rows landed, 0 rejected)"),
        ("truncated", 0.01, "2013-01-09 has 200 flights, 22% of the median (907.5) of the 14 days"),
        ("mostly rejected", 1.0, "2013-01-09 has 299 flights, 33% of the median"),
        ("edited in MongoDB", 0.01, "1 documents in flights for 2013-01-09 break the validation rules (first: "),
    ],
)
def test_quality_gates_catch_broken_days(ferretdb, tmp_path, monkeypatch, case, share, expected):
    """An empty, a truncated, a mostly rejected day (share threshold set to 1.0) and a document edited by hand (item 4)."""
    real = _real_lines(DAY9)
    tamper = None
    if case == "empty":
        lines = []
    elif case == "truncated":
        lines = real[:200]
    elif case == "mostly rejected":
        lines = real[:299] + [line.replace(b'"distance":', b'"distance":-') for line in real[299:]]
    else:
        lines = None

        def tamper(db):
            db.flights.update_one({"date": DAY9.isoformat()}, {"$set": {"distance": -5}})

    message = _gated_day(_db_uri(ferretdb), tmp_path, monkeypatch, lines, tamper, max_rejected_share=share)
    assert expected in message


# --- a day no ingest has written: inserted without reading the day (issue 13, item 5) ---------


class _Finds(monitoring.CommandListener):
    """A pymongo command listener: the ``find`` commands sent to ``flights``."""

    def __init__(self) -> None:
        self.filters: list[dict] = []

    def started(self, event) -> None:
        if event.command_name == "find" and event.command.get("find") == flights.FLIGHTS:
            self.filters.append(dict(event.command.get("filter") or {}))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def _watched(uri: str) -> tuple[Mongo, _Finds]:
    finds = _Finds()
    return Mongo(pymongo.MongoClient(uri, event_listeners=[finds]), uri, uri.rsplit("/", 1)[1]), finds


def test_a_new_day_is_inserted_without_reading_the_day_and_a_rerun_reads_it(ferretdb, tmp_path, monkeypatch):
    """On FerretDB reading a day scans the whole collection; a day never written has nothing to compare with."""
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    flights.land(DAY1)
    flights.land(DAY2)
    mongo, finds = _watched(_db_uri(ferretdb))
    first = flights.ingest(DAY1, "r1", mongo)
    second = flights.ingest(DAY2, "r1", mongo)
    assert (first["upserted"], first["unchanged"], first["removed"]) == (842, 0, 0)
    assert (second["upserted"], second["unchanged"], second["removed"]) == (943, 0, 0)
    assert [f for f in finds.filters if "date" in f] == []  # the days were never read
    assert mongo.db.flights.count_documents({"date": DAY1.isoformat()}) == 842
    marks = sorted(d["_id"] for d in mongo.db[MARKS].find())
    assert marks == sorted(
        [f"{c}/{d}" for c in (flights.FLIGHTS, flights.REJECTED) for d in (DAY1.isoformat(), DAY2.isoformat())]
        + [f"{flights.FLIGHTS}/since-empty", f"{flights.REJECTED}/since-empty"]
    )
    again = flights.ingest(DAY1, "r2", mongo)
    assert (again["upserted"], again["unchanged"], again["removed"]) == (0, 842, 0)
    assert [f for f in finds.filters if "date" in f] == [{"date": DAY1.isoformat()}]  # a re-run compares with the documents


def test_a_new_day_that_meets_documents_already_there_is_read_and_converges(ferretdb, tmp_path, monkeypatch):
    """An id of the day taken already (by another writer) makes the first ingest compare the day after all."""
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    flights.land(DAY1)
    flights.land(DAY2)
    uri = _db_uri(ferretdb)
    reference, _ = _watched(uri.rsplit("_", 1)[0] + "_ref" + uuid.uuid4().hex[:6])
    flights.ingest(DAY1, "ref", reference)
    expected = _snapshot(reference.db)[flights.FLIGHTS]
    mongo, finds = _watched(uri)
    flights.ingest(DAY2, "r1", mongo)  # the collection is marked since it was empty
    taken = sorted(expected)[5]
    mongo.db.flights.insert_one({"_id": taken, "date": DAY1.isoformat(), "tailnum": "N666XX"})  # not what the file says
    mongo.db.flights.insert_one({"_id": "2013-01-01/ZZ/1/EWR/0500", "date": DAY1.isoformat()})  # a stray of the day
    counts = flights.ingest(DAY1, "r1", mongo)
    assert (counts["upserted"], counts["unchanged"], counts["removed"]) == (842, 0, 1)
    assert {k: v for k, v in _snapshot(mongo.db)[flights.FLIGHTS].items() if k.startswith("2013-01-01/")} == expected
    assert {"date": DAY1.isoformat()} in finds.filters


def test_documents_from_before_the_marks_make_every_day_read(ferretdb, tmp_path, monkeypatch):
    """A collection loaded before ingest marked its days (an earlier version, another writer): every day is compared."""
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    flights.land(DAY1)
    mongo, finds = _watched(_db_uri(ferretdb))
    mongo.db.flights.insert_one({"_id": "2013-01-01/ZZ/1/EWR/0500", "date": DAY1.isoformat()})  # no mark, no since-empty
    counts = flights.ingest(DAY1, "r1", mongo)
    assert (counts["upserted"], counts["unchanged"], counts["removed"]) == (842, 0, 1)
    assert {"date": DAY1.isoformat()} in finds.filters
    assert mongo.db[MARKS].find_one({"_id": f"{flights.FLIGHTS}/since-empty"}) is None


def test_a_stray_written_into_a_day_never_ingested_fails_the_gates_and_the_rerun_removes_it(ferretdb, tmp_path, monkeypatch):
    """The one case the first write cannot see (a foreign document under an id not in the file): the gates can."""
    from datacloud.pipelines import quality

    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    flights.land(DAY1)
    flights.land(DAY2)
    mongo, _ = _watched(_db_uri(ferretdb))
    flights.ingest(DAY2, "r1", mongo)
    stray = {**mongo.db.flights.find_one({"date": DAY2.isoformat()}), "_id": "2013-01-01/UA/1/EWR/0515", "date": "2013-01-01"}
    mongo.db.flights.insert_one(stray)
    counts = flights.ingest(DAY1, "r1", mongo)
    assert (counts["upserted"], counts["removed"]) == (842, 0)  # inserted without reading: the stray is still there
    measured = quality.measure(DAY1, mongo)
    assert f"MongoDB holds 843 flights for {DAY1} but 842 good rows were landed." in quality.evaluate(measured, 0.01)
    again = flights.ingest(DAY1, "r2", mongo)
    assert (again["upserted"], again["unchanged"], again["removed"]) == (0, 842, 1)
