"""PySpark job: one day of flights from MongoDB -> daily_delay_stats and daily_origin_weather.

Runs unchanged on every target (see datacloud/spark.py):

    spark-submit --jars <mongo-spark-connector jars> flights_daily_stats.py \\
        --date 2013-01-01 --landing /data/landing [--database datacloud]

The MongoDB URI comes from the environment (``DATACLOUD_MONGO_URI``), never from
the command line, so it stays out of process listings and logs.

Reads the day's ``flights`` through the MongoDB Spark connector with an explicit
schema, a ``$match`` on the day pushed down as ``aggregation.pipeline`` and the
``SinglePartitionPartitioner``: FerretDB has no ``$sample``, which schema
inference and the default ``SamplePartitioner`` need, and one day (~1,000
documents) is one partition anyway. The same options work on MongoDB.
The airlines reference and the day's hourly weather come from the landing zone.

Writes one document per (date, carrier) and per (date, origin) with
deterministic ids (``2013-01-01/UA``) through the connector as replace-upserts,
so re-running a day rewrites the same documents.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

PARTITIONER = "com.mongodb.spark.sql.connector.read.partitioner.SinglePartitionPartitioner"

FLIGHT_SCHEMA = T.StructType(
    [
        T.StructField("_id", T.StringType(), False),
        T.StructField("date", T.StringType(), False),
        T.StructField("carrier", T.StringType(), False),
        T.StructField("flight", T.IntegerType(), False),
        T.StructField("origin", T.StringType(), False),
        T.StructField("dest", T.StringType(), False),
        T.StructField("sched_dep_time", T.IntegerType(), False),
        T.StructField("dep_time", T.IntegerType(), True),
        T.StructField("dep_delay", T.IntegerType(), True),
        T.StructField("arr_time", T.IntegerType(), True),
        T.StructField("arr_delay", T.IntegerType(), True),
        T.StructField("distance", T.IntegerType(), False),
        T.StructField("time_hour", T.TimestampType(), False),
    ]
)
WEATHER_SCHEMA = T.StructType(
    [
        T.StructField("origin", T.StringType()),
        T.StructField("time_hour", T.StringType()),
        T.StructField("precip", T.DoubleType()),
        T.StructField("visib", T.DoubleType()),
        T.StructField("wind_speed", T.DoubleType()),
    ]
)
AIRLINE_SCHEMA = T.StructType([T.StructField("carrier", T.StringType()), T.StructField("name", T.StringType())])

DELAY_STATS_FIELDS = (
    "_id",
    "date",
    "carrier",
    "carrier_name",
    "flights",
    "cancelled",
    "departed",
    "arrived",
    "mean_dep_delay",
    "mean_arr_delay",
    "p90_dep_delay",
    "delayed_15_share",
    "precip_share",
)
ORIGIN_WEATHER_FIELDS = (
    "_id",
    "date",
    "origin",
    "flights",
    "cancelled",
    "mean_dep_delay",
    "mean_arr_delay",
    "weather_hours",
    "mean_precip",
    "mean_visib",
    "mean_wind_speed",
)


def read_options(uri: str, database: str, collection: str, day: str) -> dict[str, str]:
    """Connector read options that work on FerretDB and MongoDB alike (see module doc)."""
    return {
        "connection.uri": uri,
        "database": database,
        "collection": collection,
        "partitioner": PARTITIONER,
        "aggregation.pipeline": json.dumps([{"$match": {"date": day}}]),
    }


def write_options(uri: str, database: str, collection: str) -> dict[str, str]:
    return {
        "connection.uri": uri,
        "database": database,
        "collection": collection,
        "operationType": "replace",
        "idFieldList": "_id",
        "upsertDocument": "true",
    }


def read_flights(spark: SparkSession, uri: str, database: str, day: str) -> DataFrame:
    return spark.read.format("mongodb").options(**read_options(uri, database, "flights", day)).schema(FLIGHT_SCHEMA).load()


def read_weather(spark: SparkSession, landing_day: str) -> DataFrame:
    raw = spark.read.schema(WEATHER_SCHEMA).json(os.path.join(landing_day, "weather.jsonl"))
    return raw.withColumn("time_hour", F.to_timestamp("time_hour", "yyyy-MM-dd'T'HH:mm:ss'Z'"))


def read_airlines(spark: SparkSession, landing_day: str) -> DataFrame:
    return spark.read.schema(AIRLINE_SCHEMA).json(os.path.join(landing_day, "airlines.jsonl"))


def _round(col: F.Column) -> F.Column:
    return F.round(col, 4)


def _mean(col: str | F.Column) -> F.Column:
    return _round(F.avg(col))


def delay_stats(flights: DataFrame, airlines: DataFrame, weather: DataFrame, day: str) -> DataFrame:
    """One row per carrier: counts, mean delays (non-null values), exact p90, shares.

    ``cancelled`` counts flights without a departure time, ``departed``/``arrived``
    those with a departure/arrival delay (the weights of the means);
    ``p90_dep_delay`` is the exact 90th percentile with linear interpolation
    (numpy's default); ``delayed_15_share``
    is the share of departed flights that left 15 minutes late or more;
    ``precip_share`` the share of flights scheduled in an hour with
    precipitation at their origin (hourly weather joined on origin and hour).
    """
    joined = flights.join(
        weather.select("origin", "time_hour", F.col("precip").alias("w_precip")), on=["origin", "time_hour"], how="left"
    )
    stats = joined.groupBy("carrier").agg(
        F.count(F.lit(1)).alias("flights"),
        F.sum(F.when(F.col("dep_time").isNull(), 1).otherwise(0)).alias("cancelled"),
        F.count("dep_delay").cast("int").alias("departed"),
        F.count("arr_delay").cast("int").alias("arrived"),
        _mean("dep_delay").alias("mean_dep_delay"),
        _mean("arr_delay").alias("mean_arr_delay"),
        _round(F.percentile(F.col("dep_delay").cast("double"), F.lit(0.9))).alias("p90_dep_delay"),
        _mean(F.when(F.col("dep_delay").isNotNull(), (F.col("dep_delay") >= 15).cast("double"))).alias("delayed_15_share"),
        F.round(F.avg(F.when(F.col("w_precip") > 0, 1.0).otherwise(0.0)), 4).alias("precip_share"),
    )
    names = airlines.select("carrier", F.col("name").alias("carrier_name"))
    out = (
        stats.join(names, on="carrier", how="left")
        .withColumn("date", F.lit(day))
        .withColumn("_id", F.concat_ws("/", F.lit(day), F.col("carrier")))
        .withColumn("flights", F.col("flights").cast("int"))
        .withColumn("cancelled", F.col("cancelled").cast("int"))
    )
    return out.select(*DELAY_STATS_FIELDS).orderBy("carrier")


def origin_weather(flights: DataFrame, weather: DataFrame, day: str) -> DataFrame:
    """One row per origin: flights and mean delays, and the day's mean hourly weather there."""
    per_origin = flights.groupBy("origin").agg(
        F.count(F.lit(1)).cast("int").alias("flights"),
        F.sum(F.when(F.col("dep_time").isNull(), 1).otherwise(0)).cast("int").alias("cancelled"),
        _mean("dep_delay").alias("mean_dep_delay"),
        _mean("arr_delay").alias("mean_arr_delay"),
    )
    day_weather = weather.groupBy("origin").agg(
        F.count(F.lit(1)).cast("int").alias("weather_hours"),
        _mean("precip").alias("mean_precip"),
        _mean("visib").alias("mean_visib"),
        _mean("wind_speed").alias("mean_wind_speed"),
    )
    out = (
        per_origin.join(day_weather, on="origin", how="left")
        .withColumn("date", F.lit(day))
        .withColumn("_id", F.concat_ws("/", F.lit(day), F.col("origin")))
        .fillna({"weather_hours": 0})
    )
    return out.select(*ORIGIN_WEATHER_FIELDS).orderBy("origin")


def write(df: DataFrame, uri: str, database: str, collection: str) -> None:
    df.write.format("mongodb").mode("append").options(**write_options(uri, database, collection)).save()


def run(spark: SparkSession, day: str, landing_day: str, uri: str, database: str) -> dict:
    """The job for one day; returns what it wrote (small: one row per carrier/origin)."""
    started = time.monotonic()
    landing_day = os.path.realpath(landing_day)  # the day's link resolved once: weather and airlines of one drop
    flights = read_flights(spark, uri, database, day).cache()
    weather = read_weather(spark, landing_day).cache()
    airlines = read_airlines(spark, landing_day)
    stats = delay_stats(flights, airlines, weather, day).cache()
    origins = origin_weather(flights, weather, day).cache()
    write(stats, uri, database, "daily_delay_stats")
    write(origins, uri, database, "daily_origin_weather")
    carriers = stats.select("carrier", "flights").collect()  # cached: no new read
    result = {
        "date": day,
        "flights": sum(r["flights"] for r in carriers),
        "carriers": [r["carrier"] for r in carriers],
        "origins": [r["origin"] for r in origins.select("origin").collect()],
        "seconds": round(time.monotonic() - started, 2),
    }
    for df in (flights, weather, stats, origins):
        df.unpersist()
    return result


def session(app_name: str = "flights_daily_stats") -> SparkSession:
    """The session for spark-submit (master, jars and conf come from spark-submit)."""
    return (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", required=True, help="the day, YYYY-MM-DD")
    parser.add_argument("--landing", required=True, help="landing zone root (the folder holding flights/date=...)")
    parser.add_argument("--database", default="datacloud")
    args = parser.parse_args(argv)
    uri = os.environ.get("DATACLOUD_MONGO_URI")
    if not uri:
        print("error: DATACLOUD_MONGO_URI is not set in the job's environment.", file=sys.stderr)
        return 2
    landing_day = os.path.join(args.landing, "flights", f"date={args.date}")
    spark = session()
    try:
        result = run(spark, args.date, landing_day, uri, args.database)
    finally:
        spark.stop()
    # One JSON line the submitting task parses (spark-submit output is otherwise log lines).
    print("DATACLOUD_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
