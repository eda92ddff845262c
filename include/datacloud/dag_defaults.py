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
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(hours=1),
}
