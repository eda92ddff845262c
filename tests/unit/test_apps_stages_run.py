"""The spark, jupyter and monitoring stages driven through a recording Kube double:
order of applies and charts, idempotent second runs, Secrets built at run time,
the Spark verification (COMPLETED, then found in the History Server)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from datacloud import connections
from datacloud.errors import TransientError, UserError
from datacloud.remote import Result
from datacloud.stages import jupyter, monitoring, spark
from datacloud.stages.apps_common import MONGO_APP_SECRET, MONGO_MONITOR_SECRET, MONGO_NS, SPARK_CONNECT_NS
from tests.unit.apps_fixtures import inventories
from tests.unit.kube_double import FakeClock, RecordingKubeDouble

PASSWORD = "p@ss/word:with#chars"


def _ctx(kube: RecordingKubeDouble, inv_name: str = "reference") -> SimpleNamespace:
    return SimpleNamespace(inv=inventories()[inv_name], dry_run=kube.dry_run, kube=lambda: kube)


def _connect_ready(kube: RecordingKubeDouble) -> None:
    """The operator reports the SparkConnect server Ready."""
    kube.scripted[("sparkconnect", spark.CONNECT_NAME)] = lambda: {"status": {"state": "Ready", "executors": {"running": 1}}}


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


def test_spark_apply_gives_the_pipelines_jobs_the_mongo_uri_and_follows_a_rotation() -> None:
    from datacloud.spark import K8S_MONGO_SECRET

    kube = RecordingKubeDouble()
    spark.apply(_ctx(kube))
    assert f"Secret/spark-jobs/{K8S_MONGO_SECRET}" not in kube.objects  # no mongo stage yet: a warning, not a failure
    kube.put_secret(MONGO_NS, MONGO_APP_SECRET, password=PASSWORD)
    out = spark.apply(_ctx(kube))
    assert f"Secret spark-jobs/{K8S_MONGO_SECRET} written (MongoDB URI for Spark jobs)" in out["changes"]
    host = "datacloud-mongo-mongos.mongo.svc.cluster.local:27017"
    uri = kube.objects[f"Secret/spark-jobs/{K8S_MONGO_SECRET}"]["stringData"]["uri"]
    assert uri == f"mongodb://datacloud:{quote(PASSWORD, safe='')}@{host}/datacloud?authSource=admin"
    assert PASSWORD not in json.dumps(out)
    assert spark.apply(_ctx(kube))["changes"] == []
    kube.put_secret(MONGO_NS, MONGO_APP_SECRET, password="rotated-" + PASSWORD)  # the mongo stage rotated it
    assert f"Secret spark-jobs/{K8S_MONGO_SECRET} written (MongoDB URI for Spark jobs)" in spark.apply(_ctx(kube))["changes"]
    assert "rotated-" in kube.objects[f"Secret/spark-jobs/{K8S_MONGO_SECRET}"]["stringData"]["uri"]


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
    _connect_ready(kube)
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
    _connect_ready(kube)
    name = "datacloud-verify-bad"
    failed = {"applicationState": {"state": "FAILED", "errorMessage": "driver container failed with ExitCode: 1"}}
    kube.scripted[("sparkapplication", name)] = _scripted_app([{"applicationState": {"state": "RUNNING"}}, failed])
    clock = FakeClock()
    with pytest.raises(TransientError, match="ended FAILED: driver container failed with ExitCode: 1"):
        spark.verify(_ctx(kube), name=name, clock=clock, sleep=clock.sleep)
    assert kube.calls[-1][1].startswith(f"delete sparkapplication {name}")


def test_spark_verify_times_out_when_history_never_lists_the_run() -> None:
    kube = RecordingKubeDouble()
    _connect_ready(kube)
    name = "datacloud-verify-slow"
    kube.scripted[("sparkapplication", name)] = _scripted_app(
        [{"applicationState": {"state": "COMPLETED"}, "sparkApplicationId": "spark-x"}]
    )
    kube.kubectl_replies.append((("get", "--raw"), _history([[]])))
    clock = FakeClock()
    with pytest.raises(TransientError, match="History Server: not done within 180 s"):
        spark.verify(_ctx(kube), name=name, clock=clock, sleep=clock.sleep)


def test_spark_connect_token_is_generated_once_and_applied_before_the_server() -> None:
    kube = RecordingKubeDouble()
    first = spark.apply(_ctx(kube))
    key = f"Secret/{SPARK_CONNECT_NS}/{spark.CONNECT_TOKEN_SECRET}"
    token = kube.objects[key]["stringData"]["token"]
    assert len(token) >= 43
    assert token not in json.dumps(first)
    assert f"Secret/{SPARK_CONNECT_NS}/{spark.CONNECT_TOKEN_SECRET} created (Spark Connect token)" in first["changes"]
    order = [c for c in kube.calls if c[0] in ("apply", "helm")]
    helm_at = order.index(("helm", f"spark-operator@{spark.operator_release(inventories()['reference']).version}"))
    assert order.index(("apply", key)) < order.index(("apply", f"SparkConnect/{SPARK_CONNECT_NS}/{spark.CONNECT_NAME}"))
    assert helm_at < order.index(("apply", f"SparkConnect/{SPARK_CONNECT_NS}/{spark.CONNECT_NAME}"))
    assert order.index(("apply", "ServiceAccount/spark-jobs/airflow-submitter")) < order.index(
        ("apply", f"Secret/spark-jobs/{spark.SUBMITTER_TOKEN_SECRET}")
    )
    assert order.index(("apply", "NetworkPolicy/spark-connect/default-deny")) < helm_at
    # a re-run (an upgrade, a relabelled namespace) keeps the token
    assert spark.apply(_ctx(kube))["changes"] == []
    assert kube.objects[key]["stringData"]["token"] == token


def test_spark_connect_token_rotates_only_when_annotated() -> None:
    kube = RecordingKubeDouble()
    spark.apply(_ctx(kube))
    key = f"Secret/{SPARK_CONNECT_NS}/{spark.CONNECT_TOKEN_SECRET}"
    old = kube.objects[key]["stringData"]["token"]
    kube.objects[key]["metadata"]["annotations"] = {"datacloud/rotate": "yes please"}
    with pytest.raises(UserError, match="set it to true to rotate the Spark Connect token"):
        spark.apply(_ctx(kube))
    kube.objects[key]["metadata"]["annotations"] = {"datacloud/rotate": "true"}
    out = spark.apply(_ctx(kube))
    assert f"{key} rotated (Spark Connect token)" in out["changes"]
    assert kube.objects[key]["stringData"]["token"] != old
    assert (
        "kubectl",
        f"annotate secret {spark.CONNECT_TOKEN_SECRET} --namespace {SPARK_CONNECT_NS} datacloud/rotate-",
    ) in kube.calls
    assert ("kubectl", f"delete pod {spark.CONNECT_SERVICE} --namespace {SPARK_CONNECT_NS} --ignore-not-found") in kube.calls


CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBcluster\n-----END CERTIFICATE-----\n"
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.submitter.signature"


def _token_controller(kube: RecordingKubeDouble, after_polls: int = 0) -> None:
    """What kube-controller-manager's token controller does: fill the Secret in (after some polls)."""
    import base64

    calls = {"n": 0}
    enc = lambda v: base64.b64encode(v.encode()).decode()  # noqa: E731

    def secret():
        calls["n"] += 1
        obj = {"kind": "Secret", "metadata": {"name": spark.SUBMITTER_TOKEN_SECRET, "namespace": "spark-jobs"}}
        if calls["n"] > after_polls:
            obj["data"] = {"token": enc(SA_TOKEN), "ca.crt": enc(CA_PEM), "namespace": enc("spark-jobs")}
        return obj

    kube.scripted[("secret", spark.SUBMITTER_TOKEN_SECRET)] = secret
    kube.kubectl_replies.append((("config", "view"), lambda args: Result(0, "https://192.168.1.1:6443", "")))


def test_spark_connections_store_the_connect_token_and_a_namespaced_kubeconfig(monkeypatch) -> None:
    import yaml

    from datacloud.config import SPARK_CONNECT_CONN_ID, SPARK_SUBMIT_CONN_ID

    store: dict[str, dict] = {}
    writes: list[str] = []
    monkeypatch.setattr(connections, "get", store.get)
    monkeypatch.setattr(connections, "write_connection", lambda cid, f: (writes.append(cid), store.__setitem__(cid, dict(f))))
    kube = RecordingKubeDouble()
    spark.apply(_ctx(kube))
    token = kube.objects[f"Secret/{SPARK_CONNECT_NS}/{spark.CONNECT_TOKEN_SECRET}"]["stringData"]["token"]
    _token_controller(kube, after_polls=2)
    clock = FakeClock()
    out = spark.connections(_ctx(kube), clock=clock, sleep=clock.sleep)
    assert out["changes"] == [f"connection {SPARK_CONNECT_CONN_ID} stored", f"connection {SPARK_SUBMIT_CONN_ID} stored"]
    assert clock.now == 4  # two polls of 2 s until the token controller had filled the Secret in
    conn = store[SPARK_CONNECT_CONN_ID]
    assert (conn["conn_type"], conn["host"], conn["port"]) == ("spark_connect", spark.connect_host(), 15002)
    assert conn["password"] == token and conn["login"] == "airflow"
    sub = store[SPARK_SUBMIT_CONN_ID]
    assert sub["conn_type"] == "kubernetes" and sub["extra"]["namespace"] == "spark-jobs"
    cfg = yaml.safe_load(sub["extra"]["kube_config"])
    assert cfg["users"][0]["user"] == {"token": SA_TOKEN}  # the ServiceAccount's token, no client certificate
    assert cfg["clusters"][0]["cluster"]["server"] == "https://192.168.1.1:6443"
    assert cfg["contexts"][0]["context"]["namespace"] == "spark-jobs"
    assert token not in json.dumps(out) and SA_TOKEN not in json.dumps(out)
    # converged: nothing is written again
    assert spark.connections(_ctx(kube), clock=clock, sleep=clock.sleep)["changes"] == []
    assert writes == [SPARK_CONNECT_CONN_ID, SPARK_SUBMIT_CONN_ID]


def test_spark_connections_time_out_when_no_token_is_issued(monkeypatch) -> None:
    monkeypatch.setattr(connections, "get", lambda cid: None)
    monkeypatch.setattr(connections, "write_connection", lambda cid, f: pytest.fail("written without a token"))
    kube = RecordingKubeDouble()
    spark.apply(_ctx(kube))
    _token_controller(kube, after_polls=10_000)
    clock = FakeClock()
    with pytest.raises(TransientError, match="airflow-submitter-token: not done within 120 s"):
        spark.connections(_ctx(kube), clock=clock, sleep=clock.sleep)


def test_spark_verify_waits_for_the_connect_server_and_reports_a_failed_one() -> None:
    kube = RecordingKubeDouble()
    states = iter([{}, {"status": {"state": "Provisioning"}}, {"status": {"state": "Ready", "executors": {"running": 1}}}])
    kube.scripted[("sparkconnect", spark.CONNECT_NAME)] = lambda: next(states)
    clock = FakeClock()
    assert spark.wait_connect_ready(kube, clock=clock, sleep=clock.sleep) == "Ready, executors {'running': 1}"
    assert clock.now == 10
    failed = {
        "status": {"state": "Failed", "conditions": [{"type": "ServerPodReady", "message": "Server pod failed: OOMKilled"}]}
    }
    kube.scripted[("sparkconnect", spark.CONNECT_NAME)] = lambda: failed
    with pytest.raises(TransientError, match="datacloud-connect failed: Server pod failed: OOMKilled"):
        spark.wait_connect_ready(kube, clock=clock, sleep=clock.sleep)


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


def test_jupyter_apply_gives_notebooks_the_connect_token() -> None:
    kube = RecordingKubeDouble()
    kube.put_secret(SPARK_CONNECT_NS, spark.CONNECT_TOKEN_SECRET, token="connect-token-value")
    out = jupyter.apply(_ctx(kube))
    assert kube.objects["Secret/jupyter/spark-connect-token"]["stringData"] == {"token": "connect-token-value"}
    assert "Secret jupyter/spark-connect-token written (Spark Connect token)" in out["changes"]
    assert "connect-token-value" not in json.dumps(out)
    assert jupyter.apply(_ctx(kube))["changes"] == []
    kube.put_secret(SPARK_CONNECT_NS, spark.CONNECT_TOKEN_SECRET, token="rotated-token-value")  # the spark stage rotated it
    assert "Secret jupyter/spark-connect-token written (Spark Connect token)" in jupyter.apply(_ctx(kube))["changes"]
    assert kube.objects["Secret/jupyter/spark-connect-token"]["stringData"] == {"token": "rotated-token-value"}


def test_jupyter_apply_deletes_what_let_notebooks_create_pods() -> None:
    """A cluster provisioned by an earlier version still has the executor Role, its binding, the
    notebook admission policy and the executor NetworkPolicy: apply deletes them, once."""
    kube = RecordingKubeDouble()
    present = {(kind, name) for kind, name, _ns in jupyter.RETIRED}
    for kind, name in present:
        kube.scripted[(kind, name)] = lambda kind=kind, name=name: (
            {"kind": kind, "metadata": {"name": name}} if (kind, name) in present else None
        )
    out = jupyter.apply(_ctx(kube))
    deleted = [c[1] for c in kube.calls if c[0] == "kubectl" and c[1].startswith("delete ")]
    assert deleted == [
        "delete rolebinding notebook-spark-executors --namespace jupyter --ignore-not-found",
        "delete role notebook-spark-executors --namespace jupyter --ignore-not-found",
        "delete networkpolicy notebook-spark-executors --namespace jupyter --ignore-not-found",
        "delete validatingadmissionpolicybinding datacloud-notebook-executors --ignore-not-found",
        "delete validatingadmissionpolicy datacloud-notebook-executors --ignore-not-found",
    ]
    assert "deleted role jupyter/notebook-spark-executors (notebooks create no pods any more)" in out["changes"]
    present.clear()  # gone now
    assert not [c for c in jupyter.apply(_ctx(kube))["changes"] if c.startswith("deleted")]


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
    assert [s.name for s in monitoring.STEPS] == ["apply", "verify"]
    assert [s.name for s in spark.STEPS] == ["apply", "connections", "verify"]
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
