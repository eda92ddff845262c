"""The spark, jupyter and monitoring stages driven through a recording Kube double:
order of applies and charts, idempotent second runs, Secrets built at run time,
the Spark verification (COMPLETED, then found in the History Server)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from datacloud.errors import TransientError, UserError
from datacloud.remote import Result
from datacloud.stages import jupyter, monitoring, spark
from datacloud.stages.apps_common import MONGO_APP_SECRET, MONGO_MONITOR_SECRET, MONGO_NS
from tests.unit.apps_fixtures import inventories
from tests.unit.kube_double import FakeClock, RecordingKubeDouble

PASSWORD = "p@ss/word:with#chars"


def _ctx(kube: RecordingKubeDouble, inv_name: str = "reference") -> SimpleNamespace:
    return SimpleNamespace(inv=inventories()[inv_name], dry_run=kube.dry_run, kube=lambda: kube)


# --- spark ---------------------------------------------------------------------


def test_spark_apply_orders_chart_before_crd_objects_and_converges() -> None:
    kube = RecordingKubeDouble()
    first = spark.apply(_ctx(kube))
    assert first["changes"]
    order = [c for c in kube.calls if c[0] in ("apply", "helm")]
    helm_at = order.index(("helm", f"spark-operator@{spark.operator_release(inventories()['reference']).version}"))
    scheduled_at = order.index(("apply", "ScheduledSparkApplication/spark-jobs/spark-pi-nightly"))
    namespaces_at = order.index(("apply", "Namespace/spark-jobs"))
    assert namespaces_at < helm_at < scheduled_at
    assert ("rollout", "deployment/spark-jobs/spark-history-server") in kube.calls
    second = spark.apply(_ctx(kube))
    assert second["changes"] == []


def test_spark_dry_run_changes_nothing() -> None:
    kube = RecordingKubeDouble(dry_run=True)
    out = spark.apply(_ctx(kube))
    assert out["changes"]
    assert out["dry_run"] is True
    assert kube.objects == {}
    assert kube.releases == {}
    assert spark.verify(_ctx(kube))["verified"] is False


def _scripted_app(states: list[dict]) -> callable:
    it = iter(states)
    last = {}

    def next_state():
        nonlocal last
        last = next(it, last)
        return {"status": last}

    return next_state


def _history(apps_by_call: list[list[dict]]):
    it = iter(apps_by_call)
    last: list[dict] = []

    def reply(args):
        nonlocal last
        last = next(it, last)
        return Result(0, json.dumps(last), "")

    return reply


def test_spark_verify_waits_for_completed_then_finds_the_run_in_history(caplog) -> None:
    kube = RecordingKubeDouble()
    name = "datacloud-verify-test"
    running = {"applicationState": {"state": "RUNNING"}, "executorState": {"e1": "RUNNING"}}
    states = [{}, {"applicationState": {"state": "SUBMITTED"}}] + [running] * 8
    states.append({"applicationState": {"state": "COMPLETED"}, "sparkApplicationId": "spark-abc"})
    kube.scripted[("sparkapplication", name)] = _scripted_app(states)
    done = [{"id": "spark-abc", "attempts": [{"completed": True}]}]
    kube.kubectl_replies.append((("get", "--raw"), _history([[], [{"id": "other", "attempts": [{"completed": True}]}], done])))
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="datacloud.stages.spark"):
        out = spark.verify(_ctx(kube), name=name, clock=clock, sleep=clock.sleep)
    assert out["verified"] is True
    assert out["spark_application_id"] == "spark-abc"
    assert out["changes"] == []
    applied = [c for c in kube.calls if c[0] == "apply"]
    assert applied == [("apply", f"SparkApplication/spark-jobs/{name}")]
    raw = [c[1] for c in kube.calls if c[0] == "kubectl" and c[1].startswith("get --raw")]
    assert raw[0] == "get --raw /api/v1/namespaces/spark-jobs/services/http:spark-history-server:18080/proxy/api/v1/applications"
    assert kube.calls[-1] == ("kubectl", f"delete sparkapplication {name} --namespace spark-jobs --ignore-not-found")
    # progress lines: at most one every 15 s of (fake) time
    waiting = [r for r in caplog.records if "waiting" in r.getMessage() and name in r.getMessage()]
    assert 2 <= len(waiting) < len(states)
    assert "RUNNING, 1 executor(s)" in caplog.text


def test_spark_verify_failure_is_reported_and_cleaned_up() -> None:
    kube = RecordingKubeDouble()
    name = "datacloud-verify-bad"
    failed = {"applicationState": {"state": "FAILED", "errorMessage": "driver container failed with ExitCode: 1"}}
    kube.scripted[("sparkapplication", name)] = _scripted_app([{"applicationState": {"state": "RUNNING"}}, failed])
    clock = FakeClock()
    with pytest.raises(TransientError, match="ended FAILED: driver container failed with ExitCode: 1"):
        spark.verify(_ctx(kube), name=name, clock=clock, sleep=clock.sleep)
    assert kube.calls[-1][1].startswith(f"delete sparkapplication {name}")


def test_spark_verify_times_out_when_history_never_lists_the_run() -> None:
    kube = RecordingKubeDouble()
    name = "datacloud-verify-slow"
    kube.scripted[("sparkapplication", name)] = _scripted_app(
        [{"applicationState": {"state": "COMPLETED"}, "sparkApplicationId": "spark-x"}]
    )
    kube.kubectl_replies.append((("get", "--raw"), _history([[]])))
    clock = FakeClock()
    with pytest.raises(TransientError, match="History Server: not done within 180 s"):
        spark.verify(_ctx(kube), name=name, clock=clock, sleep=clock.sleep)


# --- jupyter -------------------------------------------------------------------


def test_jupyter_apply_writes_the_notebook_mongo_uri_once() -> None:
    kube = RecordingKubeDouble()
    kube.put_secret(MONGO_NS, MONGO_APP_SECRET, password=PASSWORD)
    out = jupyter.apply(_ctx(kube))
    assert any("notebook-mongo" in c for c in out["changes"])
    secret = kube.objects["Secret/jupyter/notebook-mongo"]
    uri = secret["stringData"]["uri"]
    host = "datacloud-mongo-mongos.mongo.svc.cluster.local:27017"
    assert uri == f"mongodb://datacloud:{quote(PASSWORD, safe='')}@{host}/datacloud?authSource=admin"
    assert PASSWORD not in json.dumps(out)
    helm_at = kube.calls.index(("helm", f"jupyterhub@{jupyter.hub_release(inventories()['reference']).version}"))
    assert kube.calls.index(("apply", "Namespace/jupyter")) < helm_at
    assert jupyter.apply(_ctx(kube))["changes"] == []


def test_jupyter_apply_without_mongo_yet_still_installs_the_hub(caplog) -> None:
    kube = RecordingKubeDouble()
    with caplog.at_level(logging.WARNING):
        out = jupyter.apply(_ctx(kube))
    assert "Secret/jupyter/notebook-mongo" not in kube.objects
    assert "jupyterhub" in kube.releases
    assert "run the mongo stage" in caplog.text
    assert out["changes"]


def test_jupyter_verify_asks_the_hub_api() -> None:
    kube = RecordingKubeDouble()
    kube.kubectl_replies.append((("exec",), lambda args: Result(0, '{"version": "5.4.4"}', "")))
    assert jupyter.verify(_ctx(kube))["hub_version"] == "5.4.4"
    kube.kubectl_replies.insert(0, (("exec",), lambda args: Result(1, "", "error: unable to upgrade connection")))
    with pytest.raises(TransientError, match="unable to upgrade connection"):
        jupyter.verify(_ctx(kube))


# --- monitoring ----------------------------------------------------------------


def test_monitoring_needs_the_mongo_monitor_user() -> None:
    with pytest.raises(UserError, match="run the mongo stage before monitoring"):
        monitoring.apply(_ctx(RecordingKubeDouble()))


@pytest.mark.parametrize("inv_name", ["reference", "three-nodes"])
def test_monitoring_apply_builds_secrets_and_converges(inv_name: str) -> None:
    kube = RecordingKubeDouble()
    kube.put_secret(MONGO_NS, MONGO_MONITOR_SECRET, password=PASSWORD)
    out = monitoring.apply(_ctx(kube, inv_name))
    uris = kube.objects["Secret/monitoring/mongodb-exporter"]["stringData"]
    inv = inventories()[inv_name]
    assert set(uris) == {f"uri-{t}" for t in monitoring.exporter_targets(inv)}
    assert uris["uri-rs0"].startswith(f"mongodb://datacloud-monitor:{quote(PASSWORD, safe='')}@datacloud-mongo-rs0.mongo.svc")
    grafana = kube.objects["Secret/monitoring/grafana-admin"]["stringData"]["admin-password"]
    assert len(grafana) >= 32
    # CRD objects after the chart that defines them
    helm_at = kube.calls.index(("helm", f"kube-prometheus-stack@{monitoring.kps_release(inv).version}"))
    assert helm_at < kube.calls.index(("apply", "ServiceMonitor/monitoring/mongodb-exporter"))
    assert helm_at < kube.calls.index(("apply", "PrometheusRule/monitoring/datacloud"))
    assert PASSWORD not in json.dumps(out)
    again = monitoring.apply(_ctx(kube, inv_name))
    assert again["changes"] == []
    assert kube.objects["Secret/monitoring/grafana-admin"]["stringData"]["admin-password"] == grafana


def _prom_replies(targets_by_call: list[list[dict]], rules: list[str]):
    it = iter(targets_by_call)
    last: list[dict] = []

    def reply(args):
        nonlocal last
        path = args[-1]
        if "/api/v1/rules" in path:
            return Result(0, json.dumps({"data": {"groups": [{"rules": [{"name": r} for r in rules]}]}}), "")
        last = next(it, last)
        return Result(0, json.dumps({"data": {"activeTargets": last}}), "")

    return reply


def test_monitoring_verify_waits_for_every_scrape_pool() -> None:
    kube = RecordingKubeDouble()
    alerts = ["MongoShardsMissing", "MongodDown", "MongoReplicaSetNoPrimary", "NodeNotReady",
              "FilesystemAlmostFull", "CephHealthError", "SparkApplicationFailed"]  # fmt: skip
    pools = [f"{p}/0" for p in monitoring.SCRAPE_POOLS]
    partial = [{"scrapePool": pools[0], "health": "up"}, {"scrapePool": pools[1], "health": "down"}]
    full = [{"scrapePool": p, "health": "up"} for p in pools]
    kube.kubectl_replies.append((("exec",), _prom_replies([partial, partial, full], alerts)))
    clock = FakeClock()
    out = monitoring.verify(_ctx(kube), clock=clock, sleep=clock.sleep)
    assert out["verified"] is True
    assert set(out["targets"].values()) == {"up"}
    assert clock.now == 10  # two polls of 5 s before all pools were up


def test_monitoring_verify_names_missing_rules() -> None:
    kube = RecordingKubeDouble()
    kube.kubectl_replies.append((("exec",), _prom_replies([[]], ["NodeNotReady"])))
    with pytest.raises(TransientError, match="CephHealthError"):
        monitoring.verify(_ctx(kube))


def test_every_app_stage_has_apply_then_verify() -> None:
    for module in (spark, monitoring):
        assert [s.name for s in module.STEPS] == ["apply", "verify"]
    assert [s.name for s in jupyter.STEPS] == ["apply", "admin", "verify"]


def test_jupyter_admin_account_is_created_once_with_a_generated_password() -> None:
    kube = RecordingKubeDouble()
    seen: list[str] = []

    def hub(args):
        seen.append(" ".join(args))
        return Result(0, "created\n" if len(seen) == 1 else "exists\n", "")

    kube.kubectl_replies.append((("exec", "-i"), hub))
    first = jupyter.ensure_admin(_ctx(kube))
    password = kube.objects["Secret/jupyter/jupyterhub-admin"]["stringData"]["password"]
    assert len(password) >= 32
    assert len(first["changes"]) == 3  # Secret, account, sign-up opened
    assert password not in seen[0]  # the password travels on stdin, never in the command line
    assert password not in json.dumps(first)
    second = jupyter.ensure_admin(_ctx(kube))
    assert second["changes"] == []
    assert kube.objects["Secret/jupyter/jupyterhub-admin"]["stringData"]["password"] == password
    kube.kubectl_replies.insert(0, (("exec", "-i"), lambda args: Result(0, "exists-other-password\n", "")))
    with pytest.raises(UserError, match="not the one in Secret jupyter/jupyterhub-admin"):
        jupyter.ensure_admin(_ctx(kube))
