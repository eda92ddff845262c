"""The Airflow plugin: navigation links follow the recorded platform state; Spark History task link."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest

from datacloud import platform_state as ps

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("DATACLOUD_PLATFORM_STATE", str(tmp_path / "state.json"))
    monkeypatch.syspath_prepend(str(ROOT / "plugins"))
    sys.modules.pop("datacloud_plugin", None)
    return importlib.import_module("datacloud_plugin")


def test_is_a_valid_airflow_plugin(plugin):
    from airflow.plugins_manager import is_valid_plugin

    assert is_valid_plugin(plugin.DatacloudPlugin)
    inst = plugin.DatacloudPlugin()
    assert inst.name == "datacloud"
    assert [m.__name__ for m in inst.macros] == ["spark_history_url", "service_url"]
    assert [link.name for link in inst.global_operator_extra_links] == ["Spark History Server"]


def test_nav_links_appear_once_stages_ran(plugin):
    inst = plugin.DatacloudPlugin()
    assert inst.external_views == []
    ps.record_stage("jupyter", services={"jupyterhub": "http://192.168.1.1:30800"})
    assert inst.external_views == [
        {"name": "JupyterHub", "href": "http://192.168.1.1:30800", "category": "Platform", "destination": "nav"},
    ]
    ps.record_stage("monitoring", services={"grafana": "http://192.168.1.1:30300", "headlamp": "http://192.168.1.1:30400",
                                            "prometheus": "http://192.168.1.1:30090"})
    assert [v["name"] for v in inst.external_views] == ["Grafana", "JupyterHub", "Headlamp (Kubernetes)", "Prometheus"]
    ps.forget(["monitoring"])
    assert [v["name"] for v in inst.external_views] == ["JupyterHub"]


def test_views_validate_against_airflow_response_model(plugin):
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    ps.record_stage("spark", services={"spark_history": "http://10.0.0.1:18080"})
    for view in plugin.DatacloudPlugin().external_views:
        ExternalViewResponse.model_validate(view)


def test_spark_history_url_and_macro(plugin):
    assert plugin.spark_history_url("spark-123") is None  # not provisioned
    ps.record_stage("spark", services={"spark_history": "http://10.0.0.1:18080/"})
    assert plugin.spark_history_url("spark-0a1b") == "http://10.0.0.1:18080/history/spark-0a1b/jobs/"
    assert plugin.spark_history_url("a/../b c") == "http://10.0.0.1:18080/history/a%2F..%2Fb%20c/jobs/"
    assert plugin.spark_history_url(None) is None
    assert plugin.service_url("spark_history") == "http://10.0.0.1:18080"


def test_task_link_reads_the_application_id(plugin, monkeypatch):
    ps.record_stage("spark", services={"spark_history": "http://10.0.0.1:18080"})
    seen = {}

    def fake_xcom(ti_key, key):
        seen[key] = ti_key
        return {"t1": "spark-abc"}.get(ti_key.task_id)

    monkeypatch.setattr(plugin, "_xcom_value", fake_xcom)
    link = plugin.SparkHistoryLink()
    assert link.get_link(None, ti_key=SimpleNamespace(task_id="t1")) == "http://10.0.0.1:18080/history/spark-abc/jobs/"
    assert link.get_link(None, ti_key=SimpleNamespace(task_id="t2")) == ""
    assert list(seen) == [ps.SPARK_APP_XCOM_KEY]

    def broken(ti_key, key):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(plugin, "_xcom_value", broken)
    assert link.get_link(None, ti_key=SimpleNamespace(task_id="t1")) == ""


class RuntimeTaskInstanceDouble:
    """Test double for the task SDK's RuntimeTaskInstance, as the listener sees it."""

    def __init__(self, task_id, outlets, params, result, map_index=-1, dag_id="provision_platform"):
        self.dag_id, self.task_id, self.run_id, self.map_index = dag_id, task_id, "manual__1", map_index
        self.task = SimpleNamespace(outlets=[SimpleNamespace(uri=u) for u in outlets])
        self._params, self._result = params, result

    def get_template_context(self):
        return {"params": self._params}

    def xcom_pull(self, task_ids, map_indexes):
        assert (task_ids, map_indexes) == (self.task_id, self.map_index)
        return self._result


def test_listener_records_a_stage_after_its_last_task(plugin):
    import datacloud_listener

    assert datacloud_listener in plugin.DatacloudPlugin().listeners
    params = {"inventory": "inventory.example.yaml", "dry_run": False}
    result = {"changes": ["x"], "dry_run": False, "nodes": 5, "version": "1.34.2", "table": [1, 2]}
    # a step that is not the stage's last (no Asset): nothing recorded
    datacloud_listener.on_task_instance_success(None, RuntimeTaskInstanceDouble("kubernetes.init", [], params, result))
    assert not ps.load_state().any_provisioned
    # a dry run: nothing recorded
    k8s = ["datacloud://platform/kubernetes"]
    dry = RuntimeTaskInstanceDouble("kubernetes.registered", k8s, {**params, "dry_run": True}, result)
    datacloud_listener.on_task_instance_success(None, dry)
    assert not ps.load_state().any_provisioned
    # the last task of the stage, for real: recorded with its scalar facts
    last = RuntimeTaskInstanceDouble("kubernetes.registered", ["datacloud://platform/kubernetes"], params, result)
    datacloud_listener.on_task_instance_success(None, last)
    state = ps.load_state()
    assert state.facts("kubernetes") == {"nodes": 5, "version": "1.34.2"}
    assert state.stage("kubernetes")["run_id"] == "manual__1"
    # a mapped last task (one per node) records the stage without per-node facts
    prep = ["datacloud://platform/node_prep"]
    mapped = RuntimeTaskInstanceDouble("node_prep.prepare", prep, params, {"node": "n2"}, map_index=1)
    datacloud_listener.on_task_instance_success(None, mapped)
    assert ps.load_state().facts("node_prep") == {}
    # other DAGs are ignored
    other = RuntimeTaskInstanceDouble("publish", ["datacloud://platform/spark"], params, {}, dag_id="etl_flights_daily")
    datacloud_listener.on_task_instance_success(None, other)
    assert not ps.load_state().provisioned("spark")


def test_stage_module_services_become_links(plugin, monkeypatch):
    import types

    fake = types.ModuleType("datacloud.stages.monitoring")
    fake.services = lambda inv: {"grafana": f"http://{inv.control_plane.address}:3000"}
    monkeypatch.setitem(sys.modules, "datacloud.stages.monitoring", fake)
    stage = ps.record_from_task(dag_id="provision_platform", outlet_uris=["datacloud://platform/monitoring"],
                                params={"inventory": "inventory.example.yaml", "dry_run": False}, result={})
    assert stage == "monitoring"
    assert plugin.DatacloudPlugin().external_views[0]["href"] == "http://192.168.1.1:3000"


def test_the_real_stages_links_appear_once_each_stage_ran(plugin):
    """spark, monitoring and jupyter define services(inv): their addresses through ./dev tunnels (the only way
    in from outside the private network) become the Platform menu, each once its stage is recorded."""
    params = {"inventory": "inventory.example.yaml", "dry_run": False}
    assert plugin.DatacloudPlugin().external_views == []
    ps.record_from_task(dag_id="provision_platform", outlet_uris=["datacloud://platform/spark"], params=params, result={})
    assert [(v["name"], v["href"]) for v in plugin.DatacloudPlugin().external_views] == [
        ("Spark History Server", "http://127.0.0.1:18080")
    ]
    for stage in ("monitoring", "jupyter"):
        ps.record_from_task(dag_id="provision_platform", outlet_uris=[f"datacloud://platform/{stage}"], params=params, result={})
    assert [(v["name"], v["href"]) for v in plugin.DatacloudPlugin().external_views] == [
        ("Grafana", "http://127.0.0.1:3000"),
        ("JupyterHub", "http://127.0.0.1:8000"),
        ("Spark History Server", "http://127.0.0.1:18080"),
        ("Headlamp (Kubernetes)", "http://127.0.0.1:4466"),
        ("Prometheus", "http://127.0.0.1:9090"),
    ]
    assert plugin.spark_history_url("app-1") == "http://127.0.0.1:18080/history/app-1/jobs/"


def test_listener_never_fails_the_task(plugin, caplog):
    import datacloud_listener

    bad = RuntimeTaskInstanceDouble("x", ["datacloud://platform/kubernetes"], {"inventory": "/nonexistent.yaml"}, None)
    bad.xcom_pull = lambda **kw: (_ for _ in ()).throw(RuntimeError("xcom backend down"))
    datacloud_listener.on_task_instance_success(None, bad)  # no exception
    assert "Platform state | recording x failed" in caplog.text
