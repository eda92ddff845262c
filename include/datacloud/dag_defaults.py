"""Defaults every DAG shares: owner, retries with exponential backoff, start date, and an
``execution_timeout`` so that no task can hang forever (a DAG gives longer-running tasks
their own, e.g. the provisioning steps: datacloud.stages._dag.STEP_TIMEOUT).

User-fixable errors bypass these retries: tasks raise them inside
``datacloud.errors.fail_fast()``, which turns them into AirflowFailException.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

OWNER = "datacloud"
START = datetime(2024, 1, 1, tzinfo=UTC)

DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3 (True is 1.0: a constant delay)
    "max_retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(hours=1),
}

# Tasks that talk to the nodes (every provisioning and teardown step): a node that is
# rebooting (a kernel update, a power cut, an administrator's restart) is gone for one
# to a few minutes, so these back off exponentially from 20 s, each delay capped at
# 4 minutes: 20, 40, 80, 160, 240 s at the least (Airflow adds up to as much again,
# below the cap), about 9 minutes in all before the task fails. User-fixable errors
# still fail at once (datacloud.errors.fail_fast).
NODE_TASK_RETRIES = {
    "retries": 5,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3 (True is 1.0: a constant delay)
    "max_retry_delay": timedelta(minutes=4),
}
