"""Listener of the datacloud plugin: a provisioning stage that succeeded records itself.

When the last task of a stage in ``provision_platform`` (the one that carries
the Asset ``datacloud://platform/<stage>``) succeeds in a run that is not a
dry run, the stage and the addresses of what it installed go into the
platform state (``datacloud.platform_state``), and the navigation links appear.
Runs in the task's own process, right after the task succeeded.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def _outlet_uris(task: Any) -> list[str]:
    return [str(getattr(o, "uri", "")) for o in (getattr(task, "outlets", None) or [])]


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    if getattr(task_instance, "dag_id", None) != "provision_platform" or not hasattr(task_instance, "get_template_context"):
        return  # other DAGs, or a state set through the API (no task process)
    try:
        from datacloud import platform_state

        context = task_instance.get_template_context()
        map_index = getattr(task_instance, "map_index", -1)
        result = task_instance.xcom_pull(task_ids=task_instance.task_id, map_indexes=map_index)
        platform_state.record_from_task(
            dag_id=task_instance.dag_id,
            outlet_uris=_outlet_uris(task_instance.task),
            params=context["params"],
            result=result,
            run_id=task_instance.run_id,
            mapped=map_index is not None and map_index >= 0,
        )
    except Exception:  # a listener must never fail the task that already succeeded
        log.exception("Platform state | recording %s failed", getattr(task_instance, "task_id", "?"))
