"""Retries of the tasks that talk to nodes wait long enough for a rebooting node (issue 12, item 11).

The delays are Airflow's own: ``TaskInstance.next_retry_datetime`` of the installed
Airflow, for every try of every provisioning and teardown step.
"""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.models.taskinstance import TaskInstance

from datacloud.stages import STAGES
from datacloud.stages._dag import stage_group

# A machine that reboots (firmware, kernel, services) is gone for one to a few minutes.
REBOOT = timedelta(minutes=5)
CAP = timedelta(minutes=5)


def _delays(task) -> list[float]:
    """The wait before each retry of ``task``, as Airflow computes it."""
    end = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for try_number in range(1, task.retries + 1):
        ti = SimpleNamespace(
            task=task,
            try_number=try_number,
            dag_id="provision_platform",
            task_id=task.task_id,
            logical_date=end,
            end_date=end,
            retry_delay_override=None,
            log=logging.getLogger(__name__),
        )
        out.append((TaskInstance.next_retry_datetime(ti) - end).total_seconds())
    return out


def _step_tasks():
    from airflow.sdk import DAG

    with DAG("retry_backoff_probe", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        for stage in (*STAGES, "teardown"):
            stage_group(stage)
    return [t for t in dag.tasks if not t.task_id.endswith("_nodes")]


TASKS = _step_tasks()


@pytest.mark.parametrize("task", TASKS, ids=[t.task_id for t in TASKS])
def test_node_task_retries_outlast_a_reboot_with_exponential_backoff(task) -> None:
    delays = _delays(task)
    assert sum(delays) >= REBOOT.total_seconds(), (task.task_id, delays)
    assert all(later > earlier for earlier, later in itertools.pairwise(delays[:-1])), delays  # growing (the last may be capped)
    assert max(delays) <= CAP.total_seconds(), delays  # never so long that an operator waits for nothing
    assert delays[0] <= 60, delays  # a blip is retried soon


def test_the_default_args_back_off_exponentially() -> None:
    from airflow.sdk import DAG
    from airflow.sdk.bases.operator import BaseOperator

    from datacloud.dag_defaults import DEFAULT_ARGS

    with DAG("retry_backoff_defaults", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC), default_args=DEFAULT_ARGS):
        task = BaseOperator(task_id="t")
    delays = _delays(task)
    assert delays[1] >= 2 * task.retry_delay.total_seconds(), delays  # not the same delay every time
