"""platform_health against the real local stack: probes pass, a dead service is one sentence, the DAG runs green."""

from __future__ import annotations

import pytest

from datacloud import health
from datacloud.health import HealthContext, PlatformUnhealthy
from datacloud.localstack import free_port
from datacloud.platform_state import PlatformState

EMPTY = PlatformState({"stages": {}, "services": {}})


def test_local_probes_against_the_running_stack(airflow_stack):
    env = {"AIRFLOW__API__BASE_URL": airflow_stack.airflow_url, "DATACLOUD_MONGO_URI": airflow_stack.mongo_uri}
    summary = health.check(ctx=HealthContext(state=EMPTY, env=env))
    assert summary["airflow"] == "ok"
    assert summary["mongodb"] == "ok"
    assert summary["spark_master"] == "skipped"
    assert {summary[p] for p in ("nodes", "ceph", "mongo_shards", "spark_operator", "jupyterhub", "prometheus")} == {"skipped"}


def test_dead_services_fail_with_one_sentence_each(airflow_stack):
    dead_mongo, dead_spark = free_port(), free_port()
    env = {
        "AIRFLOW__API__BASE_URL": airflow_stack.airflow_url,
        "DATACLOUD_MONGO_URI": f"mongodb://app:hunter2secret@127.0.0.1:{dead_mongo}/datacloud",
        "DATACLOUD_SPARK_TARGET": "standalone",
        "DATACLOUD_SPARK_MASTER": f"spark://127.0.0.1:{dead_spark}",
    }
    with pytest.raises(PlatformUnhealthy) as exc:
        health.check(ctx=HealthContext(state=EMPTY, env=env, timeout=1.0))
    msg = str(exc.value)
    assert msg.startswith("2 problem(s): MongoDB at mongodb://app:***@127.0.0.1:")
    assert f"the Spark master at spark://127.0.0.1:{dead_spark} does not accept connections (Connection refused)." in msg
    assert "hunter2secret" not in msg

