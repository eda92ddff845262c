"""datacloud's Airflow plugin: platform links in the navigation, Spark History links on tasks.

* **Navigation**: one link per platform web UI (Grafana, JupyterHub, Spark
  History Server, Headlamp, Prometheus) under "Platform" in the Airflow menu.
  The addresses come from the platform state the stages record
  (``datacloud.platform_state``); a link appears once its stage has run and
  is read again on every page load, so no restart is needed after provisioning.
* **Task link** "Spark History Server" on every task: it points at the Spark
  application a task recorded under the XCom key ``spark_application_id``
  (``datacloud.platform_state.SPARK_APP_XCOM_KEY``); other tasks show it disabled.
* **Macros**: ``{{ macros.datacloud.spark_history_url(app_id) }}`` and
  ``{{ macros.datacloud.service_url("grafana") }}`` for templated fields.
* **Listener** (``datacloud_listener``): the last task of a provisioning stage
  records the stage in the platform state when it succeeds (not in a dry run).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import datacloud_listener
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from datacloud import platform_state

log = logging.getLogger(__name__)

CATEGORY = "Platform"


def service_url(key: str) -> str | None:
    """The recorded address of a platform service, or None before its stage ran."""
    return platform_state.load_state().service_url(key)


def spark_history_url(app_id: str | None) -> str | None:
    """The History Server page of one Spark application (None when unknown or not provisioned)."""
    base = service_url("spark_history")
    if not base or not app_id:
        return None
    return f"{base}/history/{quote(str(app_id), safe='')}/jobs/"


def nav_links(state: platform_state.PlatformState | None = None) -> list[dict[str, Any]]:
    """The external views for the navigation, from the current platform state."""
    state = state or platform_state.load_state()
    return [
        {"name": svc.title, "href": url, "category": CATEGORY, "destination": "nav"}
        for svc, url in state.links()
    ]


def _xcom_value(ti_key: Any, key: str) -> Any:
    """Read one XCom in the API server (where extra links are resolved)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key=key, run_id=ti_key.run_id, dag_ids=ti_key.dag_id, task_ids=ti_key.task_id, map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    if not row:
        return None
    value = row.value
    try:
        return json.loads(value) if isinstance(value, (str, bytes)) else value
    except ValueError:
        return value


class SparkHistoryLink(BaseOperatorLink):
    """Task button that opens the task's Spark application in the History Server."""

    name = "Spark History Server"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        try:
            app_id = _xcom_value(ti_key, platform_state.SPARK_APP_XCOM_KEY)
        except Exception:
            log.exception("Spark History link | reading the application id of %s failed", ti_key)
            return ""
        return spark_history_url(app_id) or ""


class DatacloudPlugin(AirflowPlugin):
    name = "datacloud"
    macros = [spark_history_url, service_url]  # noqa: RUF012 - AirflowPlugin's interface
    global_operator_extra_links = [SparkHistoryLink()]  # noqa: RUF012
    listeners = [datacloud_listener]  # noqa: RUF012

    @property
    def external_views(self) -> list[dict[str, Any]]:  # read per request: links appear once a stage has run
        return nav_links()
