"""Stats math of the Spark job on small hand-made frames (one local SparkSession for the module)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from datacloud import spark as dspark

DAY = "2013-01-01"
TH = datetime(2013, 1, 1, 10)  # 05:00 in New York, as a naive UTC timestamp


@pytest.fixture(scope="module")
def session():
    s, created, _ = dspark.local_session()
    yield s
    if created:
        s.stop()


@pytest.fixture(scope="module")
def job():
    return dspark._job_module()


def flight(carrier, dep_delay, arr_delay=0, origin="EWR", time_hour=TH, n=[0]):  # noqa: B006 - a counter for unique ids
    n[0] += 1
    cancelled = dep_delay is None
    return (
        f"{DAY}/{carrier}/{n[0]}", DAY, carrier, n[0], origin, "IAH", 515,
        None if cancelled else 515, dep_delay, None if cancelled else 830, None if cancelled else arr_delay, 1400, time_hour,
    )


def frames(session, job, rows, weather_rows=()):
    flights = session.createDataFrame(rows, job.FLIGHT_SCHEMA)
    airlines = session.createDataFrame([("UA", "United Air Lines Inc."), ("AA", "American Airlines Inc.")], job.AIRLINE_SCHEMA)
    weather = session.createDataFrame(list(weather_rows), job.WEATHER_SCHEMA)
    from pyspark.sql import functions as F

    weather = weather.withColumn("time_hour", F.to_timestamp("time_hour", "yyyy-MM-dd'T'HH:mm:ss'Z'"))
    return flights, airlines, weather


def test_delay_stats_per_carrier(session, job):
    ua_delays = [-5, 0, 10, 20, 30, 60]
    rows = [flight("UA", d, arr_delay=d - 3) for d in ua_delays] + [flight("UA", None)]
    rows += [flight("AA", 15, arr_delay=None), flight("AA", 14, arr_delay=20)]
    weather = [("EWR", "2013-01-01T10:00:00Z", 0.02, 9.0, 12.0)]
    flights, airlines, weather = frames(session, job, rows, weather)
    out = {r["carrier"]: r.asDict() for r in job.delay_stats(flights, airlines, weather, DAY).collect()}

    ua = out["UA"]
    assert list(ua) == list(job.DELAY_STATS_FIELDS)
    assert ua["_id"] == "2013-01-01/UA"
    assert ua["date"] == DAY
    assert ua["carrier_name"] == "United Air Lines Inc."
    assert (ua["flights"], ua["cancelled"], ua["departed"], ua["arrived"]) == (7, 1, 6, 6)
    assert ua["mean_dep_delay"] == pytest.approx(np.mean(ua_delays), abs=1e-4)
    assert ua["mean_arr_delay"] == pytest.approx(np.mean(ua_delays) - 3, abs=1e-4)
    assert ua["p90_dep_delay"] == pytest.approx(np.percentile(ua_delays, 90), abs=1e-4)  # 45.0, interpolated
    assert ua["delayed_15_share"] == pytest.approx(3 / 6, abs=1e-4)  # 20, 30, 60 of the six that departed
    assert ua["precip_share"] == 1.0  # every UA flight was scheduled in the rainy hour at EWR

    aa = out["AA"]
    assert (aa["flights"], aa["cancelled"], aa["departed"], aa["arrived"]) == (2, 0, 2, 1)
    assert aa["mean_arr_delay"] == 20.0  # the null arrival delay is not counted
    assert aa["delayed_15_share"] == 0.5  # 15 counts as delayed, 14 does not


def test_all_cancelled_carrier_has_null_means(session, job):
    flights, airlines, weather = frames(session, job, [flight("UA", None), flight("UA", None)])
    (ua,) = job.delay_stats(flights, airlines, weather, DAY).collect()
    assert (ua["flights"], ua["cancelled"], ua["departed"]) == (2, 2, 0)
    assert ua["mean_dep_delay"] is None
    assert ua["p90_dep_delay"] is None
    assert ua["delayed_15_share"] is None
    assert ua["precip_share"] == 0.0  # no weather row: not counted as rain


def test_origin_weather_means_the_days_hourly_observations(session, job):
    rows = [flight("UA", 10, origin="EWR"), flight("AA", 20, origin="EWR"), flight("UA", None, origin="JFK")]
    weather = [
        ("EWR", "2013-01-01T10:00:00Z", 0.0, 10.0, 10.0),
        ("EWR", "2013-01-01T11:00:00Z", 0.1, 6.0, 20.0),
        ("LGA", "2013-01-01T11:00:00Z", 0.5, 1.0, 30.0),  # no flight from LGA: no document
    ]
    flights, _, weather = frames(session, job, rows, weather)
    out = {r["origin"]: r.asDict() for r in job.origin_weather(flights, weather, DAY).collect()}
    assert sorted(out) == ["EWR", "JFK"]
    ewr = out["EWR"]
    assert list(ewr) == list(job.ORIGIN_WEATHER_FIELDS)
    assert ewr["_id"] == "2013-01-01/EWR"
    assert (ewr["flights"], ewr["cancelled"], ewr["mean_dep_delay"]) == (2, 0, 15.0)
    assert (ewr["weather_hours"], ewr["mean_precip"], ewr["mean_visib"], ewr["mean_wind_speed"]) == (2, 0.05, 8.0, 15.0)
    jfk = out["JFK"]
    assert (jfk["flights"], jfk["cancelled"], jfk["weather_hours"], jfk["mean_precip"]) == (1, 1, 0, None)


def test_connector_options_avoid_sample_and_push_the_day_down(job):
    opts = job.read_options("mongodb://127.0.0.1:1/x", "datacloud", "flights", DAY)
    assert opts["partitioner"].endswith("SinglePartitionPartitioner")
    assert opts["aggregation.pipeline"] == '[{"$match": {"date": "2013-01-01"}}]'
    w = job.write_options("mongodb://127.0.0.1:1/x", "datacloud", "daily_delay_stats")
    assert (w["operationType"], w["idFieldList"], w["upsertDocument"]) == ("replace", "_id", "true")
