"""Monitoring: monitors select what they scrape, rules pass promtool, dashboards lint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from datacloud.stages import monitoring, spark
from datacloud.stages.apps_common import MONITORING_NS
from tests.unit.apps_fixtures import all_objects, by_kind, inventories, selects

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed; ./dev setup installs it"
)


def _ns_of(monitor: dict) -> list[str]:
    return monitor["spec"].get("namespaceSelector", {}).get("matchNames") or [monitor["metadata"]["namespace"]]


@pytest.mark.parametrize("inv_name", ["reference", "three-nodes", "single-local-path"])
def test_mongodb_service_monitor_matches_every_exporter_service(inv_name: str) -> None:
    inv = inventories()[inv_name]
    objs = all_objects(inv_name)
    (sm,) = [o for o in by_kind(objs, "ServiceMonitor") if o["metadata"]["name"] == "mongodb-exporter"]
    services = [s for s in by_kind(objs, "Service") if s["metadata"]["namespace"] in _ns_of(sm)]
    matched = [s for s in services if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
    assert sorted(s["metadata"]["name"] for s in matched) == sorted(
        f"mongodb-exporter-{t}" for t in monitoring.exporter_targets(inv)
    )
    assert len(matched) == inv.components.mongo.shards + 2
    deployments = {d["metadata"]["name"]: d for d in by_kind(objs, "Deployment")}
    for svc in matched:
        # the endpoint's port exists on the Service, and the Service selects its exporter pod
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
        pod_labels = deployments[svc["metadata"]["name"]]["spec"]["template"]["metadata"]["labels"]
        assert selects({"matchLabels": svc["spec"]["selector"]}, pod_labels)
        for label in sm["spec"]["targetLabels"]:
            assert label in svc["metadata"]["labels"]
    # and it matches nothing else
    assert all(s in matched for s in services if s["metadata"]["name"].startswith("mongodb-exporter"))


def test_spark_operator_pod_monitor_matches_the_chart_labels() -> None:
    objs = all_objects("reference")
    (pm,) = by_kind(objs, "PodMonitor")
    record = monitoring.chart_labels()["spark-operator-controller"]
    assert record["namespace"] in _ns_of(pm)
    assert selects(pm["spec"]["selector"], record["labels"])
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in record["ports"]
    # the record agrees with the release we install: name and instance come from chart and release name
    rel = monitoring_release_names()
    assert record["labels"]["app.kubernetes.io/instance"] == rel["spark-operator"]
    # the webhook pods are not scraped by it
    webhook = {**record["labels"], "app.kubernetes.io/component": "webhook"}
    assert not selects(pm["spec"]["selector"], webhook)
    # the chart serves metrics on that port (values we set)
    values = _spark_values()
    assert values["prometheus"]["metrics"]["port"] == record["ports"]["metrics"]
    assert values["prometheus"]["metrics"]["portName"] == "metrics"


def monitoring_release_names() -> dict[str, str]:
    return {spark.OPERATOR_RELEASE: spark.OPERATOR_RELEASE}


def _spark_values() -> dict:
    return spark.operator_release(inventories()["reference"]).values


def test_ceph_service_monitor_matches_rooks_mgr_service() -> None:
    (sm,) = [o for o in by_kind(all_objects("reference"), "ServiceMonitor") if o["metadata"]["name"] == "rook-ceph-mgr"]
    record = monitoring.chart_labels()["rook-ceph-mgr"]
    assert record["kind"] == "Service"
    assert record["namespace"] in _ns_of(sm)
    assert selects(sm["spec"]["selector"], record["labels"])
    assert sm["spec"]["endpoints"][0]["port"] in record["ports"]


def test_selector_helper_can_say_no() -> None:
    assert not selects({"matchLabels": {"a": "1"}}, {"a": "2"})
    assert not selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]}]}, {})
    assert selects({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""})


def test_prometheus_picks_up_our_monitors_and_rules() -> None:
    spec = monitoring.kps_release(inventories()["reference"]).values["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["retention"] == "7d"
    assert spec["storageSpec"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "rook-ceph-block"


def test_prometheus_may_scrape_the_spark_operator() -> None:
    """The operator's namespace denies by default; the allow must cover Prometheus's pods and the port."""
    objs = all_objects("reference")
    pol = next(p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == "allow-prometheus-controller")
    record = monitoring.chart_labels()
    assert selects(pol["spec"]["podSelector"], record["spark-operator-controller"]["labels"])
    peer = pol["spec"]["ingress"][0]["from"][0]
    assert selects(peer["podSelector"], record["prometheus"]["labels"])
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": MONITORING_NS}
    assert pol["spec"]["ingress"][0]["ports"][0]["port"] == record["spark-operator-controller"]["ports"]["metrics"]


# --- rules -------------------------------------------------------------------


@needs_promtool
@pytest.mark.parametrize("inv_name", ["reference", "three-nodes"])
def test_promtool_check_and_unit_tests(tmp_path: Path, inv_name: str) -> None:
    inv = inventories()[inv_name]
    rules = tmp_path / "datacloud.rules.yaml"
    rules.write_text(monitoring.rule_file_text(inv))
    tests = tmp_path / "datacloud.test.yaml"
    tests.write_text(monitoring.rule_test_text(inv, rules.name))
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    run = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests are not vacuous: with the node alert's threshold broken they fail."""
    inv = inventories()["reference"]
    rules = tmp_path / "datacloud.rules.yaml"
    rules.write_text(monitoring.rule_file_text(inv).replace('status="true"} == 0', 'status="true"} == 2'))
    tests = tmp_path / "datacloud.test.yaml"
    tests.write_text(monitoring.rule_test_text(inv, rules.name))
    run = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode != 0
    assert "NodeNotReady" in run.stdout + run.stderr


def test_every_alert_has_summary_and_runbook_and_the_issue_list_is_covered() -> None:
    groups = yaml.safe_load(monitoring.rule_file_text(inventories()["reference"]))["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(alerts) == {
        "MongoShardsMissing",
        "MongodDown",
        "MongoReplicaSetNoPrimary",
        "NodeNotReady",
        "CephHealthError",
        "SparkApplicationFailed",
        "FilesystemAlmostFull",
    }
    runbook = (monitoring.DIR.parents[1] / monitoring.RUNBOOK).read_text().lower()
    for name, rule in alerts.items():
        assert rule["annotations"]["summary"]
        anchor = rule["annotations"]["runbook_url"].split("#")[1]
        assert anchor == name.lower()
        assert f"## {name.lower()}" in runbook
    assert "< 2" in alerts["MongoShardsMissing"]["expr"]
    assert "< 3" in yaml.safe_load(monitoring.rule_file_text(inventories()["three-nodes"]))["groups"][0]["rules"][0]["expr"]


# --- dashboards and the metric inventory --------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}


def metrics_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (functions, labels, keywords and durations removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)  # label lists
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        word = m.group(0)
        after = s[m.end() :].lstrip()
        if after.startswith("(") or word.lower() in KEYWORDS:
            continue
        if s[: m.start()].rstrip().endswith(tuple("0123456789.")) and re.fullmatch(r"[a-z]+", word):
            continue  # unit of a number, as in 1e3
        names.add(word)
    return names


def known_metrics() -> set[str]:
    return {m for metrics in monitoring.metric_inventory().values() for m in metrics}


def _covered(name: str, known: set[str]) -> bool:
    if name in known:
        return True
    base = re.sub(r"_(sum|count|bucket)$", "", name)
    return base in known


def test_metric_parser() -> None:
    assert metrics_in('sum by (shard) (rate(a_total{x="y{z}"}[5m])) / b') == {"a_total", "b"}
    assert metrics_in("max(c == bool 1) == 0") == {"c"}
    assert metrics_in('100 * (1 - d{fstype!~"tmpfs"} / e) > 85') == {"d", "e"}


@pytest.mark.parametrize("path", monitoring.dashboard_files(), ids=lambda p: p.name)
def test_dashboard_lint(path: Path) -> None:
    board = json.loads(path.read_text())
    variables = board["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" and v["name"] == "datasource" for v in variables)
    assert board["uid"].startswith("datacloud-")
    known = known_metrics()
    assert board["panels"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used = metrics_in(target["expr"])
            assert used, target["expr"]
            missing = [m for m in used if not _covered(m, known)]
            assert not missing, f"{path.name} / {panel['title']}: {missing} not in manifests/monitoring/metrics.yaml"


def test_dashboards_cover_the_required_views() -> None:
    titles = {json.loads(p.read_text())["title"]: p for p in monitoring.dashboard_files()}
    assert set(titles) == {"MongoDB sharding", "Spark applications", "Ceph", "Nodes"}
    mongo = json.loads(titles["MongoDB sharding"].read_text())
    text = json.dumps(mongo)
    for metric in (
        "mongodb_mongos_sharding_shards_total",
        "mongodb_mongos_sharding_shard_chunks_total",
        "mongodb_op_counters_total",
        "mongodb_dbstats_storageSize",
    ):
        assert metric in text


def test_rules_use_only_inventoried_metrics() -> None:
    groups = yaml.safe_load(monitoring.rule_file_text(inventories()["reference"]))["groups"]
    known = known_metrics()
    for rule in (r for g in groups for r in g["rules"]):
        missing = [m for m in metrics_in(rule["expr"]) if not _covered(m, known)]
        assert not missing, (rule["alert"], missing)


def test_dashboards_ship_as_sidecar_configmaps() -> None:
    cms = [o for o in by_kind(all_objects("reference"), "ConfigMap") if o["metadata"]["name"].startswith("dashboard-")]
    assert len(cms) == len(monitoring.dashboard_files())
    sidecar = monitoring.kps_release(inventories()["reference"]).values["grafana"]["sidecar"]["dashboards"]
    for cm in cms:
        assert cm["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
        (content,) = cm["data"].values()
        json.loads(content)
