"""etl_flights_daily is declared as the issue asks: schedule, dates, params, order, asset."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from datacloud.config import REPO_ROOT


def load(monkeypatch, **env):
    from airflow.dag_processing.dagbag import DagBag

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "etl_flights_daily.py"))
    assert bag.import_errors == {}
    return bag.dags["etl_flights_daily"]


def test_schedule_dates_and_runs(monkeypatch):
    dag = load(monkeypatch, DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS="2")
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"  # runs carry a one-day data interval
    assert dag.start_date == datetime(2013, 1, 1, tzinfo=UTC)
    assert dag.end_date == datetime(2013, 12, 31, tzinfo=UTC)
    assert dag.catchup is False
    assert dag.max_active_runs == 2
    assert {"datacloud", "pipeline", "flights"} <= set(dag.tags)
    assert dag.doc_md
    assert "data interval" in dag.doc_md


def test_tasks_in_order_with_retries(monkeypatch):
    dag = load(monkeypatch)
    order = ["land", "ingest", "transform", "quality", "publish"]
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    for task in dag.tasks:
        assert task.retries >= 2
        assert task.retry_exponential_backoff
    outlets = dag.get_task("publish").outlets
    assert [a.uri for a in outlets] == ["datacloud://datasets/daily_delay_stats"]


def test_params_render_in_the_trigger_form(monkeypatch):
    dag = load(monkeypatch)
    for name, param in dag.params.items():
        assert param.schema.get("title"), name
        assert param.schema.get("type"), name
        assert param.description, name
    share = dag.params.get_param("max_rejected_share")
    assert share.value == 0.01
    assert (share.schema["minimum"], share.schema["maximum"]) == (0, 0.5)  # a mostly rejected day never passes
    volume = dag.params.get_param("min_volume_ratio")
    assert volume.value == 0.5
    assert (volume.schema["minimum"], volume.schema["maximum"]) == (0.1, 0.6)  # never off; never above a legit day


def test_bad_max_active_runs_is_one_sentence(monkeypatch):
    from datacloud.errors import UserError
    from datacloud.pipelines.flights import max_active_runs

    monkeypatch.setenv("DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS", "zero")
    with pytest.raises(UserError, match="must be a whole number >= 1"):
        max_active_runs()


def test_connect_target_runs_several_days_at_once(monkeypatch):
    monkeypatch.delenv("DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS", raising=False)
    monkeypatch.delenv("DATACLOUD_SPARK_CONNECT_SLOTS", raising=False)
    dag = load(monkeypatch, DATACLOUD_SPARK_TARGET="connect")
    transform = dag.get_task("transform")
    assert type(transform).__name__ == "FlightsSparkConnectOperator"
    assert transform.max_active_tis_per_dag == 2  # the Connect server's slots
    assert dag.max_active_runs == 6  # while two days transform, the next ones land and ingest
    local = load(monkeypatch, DATACLOUD_SPARK_TARGET="local")
    assert local.max_active_runs == 3
