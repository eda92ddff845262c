"""Stage monitoring: kube-prometheus-stack (small profile), MongoDB exporters, rules,
dashboards and Headlamp.

``render(inv)`` gives the namespace and NetworkPolicies, one Percona
mongodb_exporter per MongoDB target (mongos, config servers, every shard), the
ServiceMonitors/PodMonitor for MongoDB, the spark-operator and Ceph, the
PrometheusRule built from manifests/monitoring/rules/, the Grafana dashboards of
manifests/monitoring/dashboards/ as ConfigMaps for the sidecar, and the
read-only identity of Headlamp; plus the two chart releases.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from datacloud.config import MANIFESTS_DIR
from datacloud.inventory import Inventory
from datacloud.render import Release, Rendered, render_template, render_text, versions
from datacloud.stages import spark
from datacloud.stages.apps_common import (
    MONITORING_NS,
    ROOK_NS,
    SPARK_OPERATOR_NS,
    netpol_context,
    resources,
    split,
    storage_classes,
)

log = logging.getLogger(__name__)

KPS_RELEASE = "kube-prometheus-stack"
HEADLAMP_RELEASE = "headlamp"
EXPORTER_SECRET = "mongodb-exporter"  # noqa: S105 - Secret names, not values
GRAFANA_ADMIN_SECRET = "grafana-admin"  # noqa: S105
DASHBOARD_LABEL = "grafana_dashboard"
RUNBOOK = "docs/alerts.md"
DIR = MANIFESTS_DIR / "monitoring"
RULES_TEMPLATE = "monitoring/rules/datacloud.rules.yaml.j2"
RULES_TEST_TEMPLATE = "monitoring/rules/datacloud.test.yaml.j2"
# Sidecars inside pods the capacity catalogue counts as one: their requests come
# out of the pod's budget (apps_common.split), so the catalogue stays exact.
RELOADER = (10, 24)
GRAFANA_SIDECAR = (10, 48)


def chart_labels() -> dict[str, Any]:
    return yaml.safe_load((DIR / "chart-labels.yaml").read_text())


def metric_inventory() -> dict[str, list[str]]:
    return yaml.safe_load((DIR / "metrics.yaml").read_text())


def exporter_targets(inv: Inventory) -> list[str]:
    return ["mongos", "cfg"] + [f"rs{i}" for i in range(inv.components.mongo.shards)]


def exporter_labels(target: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mongodb-exporter",
        "app.kubernetes.io/instance": f"mongodb-exporter-{target}",
        "app.kubernetes.io/part-of": "datacloud",
        "mongo_target": target,
    }


def rules_context(inv: Inventory) -> dict[str, Any]:
    return {"shards": inv.components.mongo.shards, "runbook": RUNBOOK}


def rule_file_text(inv: Inventory) -> str:
    """The alert rules as a Prometheus rule file (what promtool checks)."""
    return render_text(RULES_TEMPLATE, **rules_context(inv))


def rule_test_text(inv: Inventory, rule_file: str) -> str:
    return render_text(RULES_TEST_TEMPLATE, rule_file=rule_file, **rules_context(inv))


def prometheus_rule(inv: Inventory) -> dict[str, Any]:
    groups = yaml.safe_load(rule_file_text(inv))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "datacloud", "namespace": MONITORING_NS, "labels": {"app.kubernetes.io/part-of": "datacloud"}},
        "spec": {"groups": groups},
    }


def dashboard_files() -> list[Path]:
    return sorted((DIR / "dashboards").glob("*.json"))


def dashboard_configmaps() -> list[dict[str, Any]]:
    out = []
    for path in dashboard_files():
        json.loads(path.read_text())  # refuse to ship a broken file
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"dashboard-{path.stem}",
                    "namespace": MONITORING_NS,
                    "labels": {DASHBOARD_LABEL: "1", "app.kubernetes.io/part-of": "datacloud"},
                    "annotations": {"grafana_folder": "datacloud"},
                },
                "data": {path.name: path.read_text()},
            }
        )
    return out


def kps_release(inv: Inventory) -> Release:
    mo = inv.components.monitoring
    classes = storage_classes(inv)
    chart = versions()["monitoring"]["kube_prometheus_stack_chart"]
    prom, prom_reloader = split(mo.prometheus, *RELOADER)
    am, _am_reloader = split(mo.alertmanager, *RELOADER)
    grafana, grafana_sidecar = split(mo.grafana, *GRAFANA_SIDECAR)
    values: dict[str, Any] = {
        "crds": {"enabled": True},
        "defaultRules": {
            "create": True,
            "rules": {
                "etcd": False,
                "kubeControllerManager": False,
                "kubeSchedulerAlerting": False,
                "kubeSchedulerRecording": False,
                "kubeProxy": False,
                "windows": False,
            },
        },
        # kubeadm binds these to 127.0.0.1 on the control plane: not scrapable, so not scraped.
        "kubeEtcd": {"enabled": False},
        "kubeControllerManager": {"enabled": False},
        "kubeScheduler": {"enabled": False},
        "kubeProxy": {"enabled": False},
        "windowsMonitoring": {"enabled": False},
        "prometheus": {
            "prometheusSpec": {
                "retention": mo.retention,
                "retentionSize": f"{mo.retention_size_gb}GB",
                "scrapeInterval": "30s",
                "evaluationInterval": "30s",
                "resources": resources(prom),
                # Pick up every ServiceMonitor/PodMonitor/PrometheusRule, not only the chart's.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "storageSpec": {
                    "volumeClaimTemplate": {
                        "spec": {
                            "storageClassName": classes["block"],
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": f"{mo.retention_size_gb + 5}Gi"}},
                        }
                    }
                },
            }
        },
        "prometheusOperator": {
            "resources": resources(mo.operator),
            "prometheusConfigReloader": {"resources": resources(prom_reloader)},
        },
        "alertmanager": {"alertmanagerSpec": {"resources": resources(am), "retention": "120h"}},
        "grafana": {
            "resources": resources(grafana),
            "admin": {"existingSecret": GRAFANA_ADMIN_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
            "persistence": {"enabled": False},
            "defaultDashboardsEnabled": True,
            # A Role in this namespace, not the chart's ClusterRole: the sidecars watch ConfigMaps
            # and Secrets, and cluster-wide that would be every Secret (MongoDB's users included).
            "rbac": {"namespaced": True},
            "sidecar": {
                "resources": resources(grafana_sidecar),
                "dashboards": {
                    "enabled": True,
                    "searchNamespace": MONITORING_NS,  # our dashboards and the chart's live here
                    "label": DASHBOARD_LABEL,
                    "labelValue": "1",
                    "folderAnnotation": "grafana_folder",
                    "provider": {"foldersFromFilesStructure": True},
                },
                "datasources": {"enabled": True},
            },
        },
        "kube-state-metrics": {"resources": resources(mo.kube_state_metrics)},
        "prometheus-node-exporter": {"resources": resources(mo.node_exporter)},
    }
    return Release(KPS_RELEASE, MONITORING_NS, chart["name"], chart["repo"], str(chart["version"]), values)


def headlamp_release(inv: Inventory) -> Release:
    chart = versions()["monitoring"]["headlamp_chart"]
    values = {
        # No chart-made ClusterRoleBinding (older charts bound cluster-admin); ours binds `view`.
        "clusterRoleBinding": {"create": False},
        "serviceAccount": {"create": True, "name": "headlamp"},
        "resources": resources(inv.components.monitoring.headlamp),
        "service": {"type": "ClusterIP", "port": 80},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    return Release(HEADLAMP_RELEASE, MONITORING_NS, chart["name"], chart["repo"], str(chart["version"]), values)


def _context(inv: Inventory) -> dict[str, Any]:
    labels = chart_labels()
    return {
        "ns": MONITORING_NS,
        "spark_operator_ns": SPARK_OPERATOR_NS,
        "rook_ns": ROOK_NS,
        "spark_controller_labels": spark.OPERATOR_CONTROLLER_LABELS,
        "ceph_mgr_labels": labels["rook-ceph-mgr"]["labels"],
        "targets": exporter_targets(inv),
        "exporter_labels": exporter_labels,
        "exporter_resources": resources(inv.components.monitoring.mongodb_exporter),
        "image": versions()["monitoring"]["mongodb_exporter_image"],
        "secret": EXPORTER_SECRET,
        "net": netpol_context(inv),
    }


def services(inv: Inventory) -> dict[str, str]:
    """The navigation links this stage gives the Airflow UI once it ran (through `./dev tunnels`)."""
    from datacloud import tunnels

    return tunnels.links(inv, "monitoring")


def render(inv: Inventory) -> Rendered:
    ctx = _context(inv)
    objects = {
        stem: render_template(f"monitoring/{stem}.yaml.j2", **ctx)
        for stem in ("namespace", "networkpolicies", "mongodb-exporter", "monitors", "headlamp-rbac")
    }
    if inv.storage_backend != "rook-ceph":  # no Ceph, no mgr to scrape
        objects["monitors"] = [o for o in objects["monitors"] if o["metadata"]["name"] != "rook-ceph-mgr"]
    objects["rules"] = [prometheus_rule(inv)]
    objects["dashboards"] = dashboard_configmaps()
    return Rendered(objects=objects, releases=[kps_release(inv), headlamp_release(inv)])


# --- run side (the stage contract of datacloud.stages: STEPS) -------------------

PROMETHEUS_POD = "prometheus-kube-prometheus-stack-prometheus-0"
SCRAPE_POOLS = (
    "serviceMonitor/monitoring/mongodb-exporter",
    "podMonitor/monitoring/spark-operator",
    "serviceMonitor/monitoring/rook-ceph-mgr",
)


def scrape_pools(inv: Inventory) -> tuple[str, ...]:
    """The pools verify waits for: the Ceph mgr's only where the storage stage installs Ceph."""
    return tuple(p for p in SCRAPE_POOLS if inv.storage_backend == "rook-ceph" or not p.endswith("/rook-ceph-mgr"))


def _outcome(step: str, changes: list[str], dry_run: bool, **facts: Any) -> dict[str, Any]:
    from datacloud.stages._common import outcome

    return outcome("monitoring", step, changes, dry_run, **facts)


def exporter_uris(inv: Inventory, password: str) -> dict[str, str]:
    """uri-<target> for every exporter: the monitor user on mongos, the config servers and each shard."""
    from urllib.parse import quote

    from datacloud.stages.apps_common import MONGO_MONITOR_USER, MONGO_PORT, mongo_service_host

    cred = f"{quote(MONGO_MONITOR_USER, safe='')}:{quote(password, safe='')}"
    return {f"uri-{t}": f"mongodb://{cred}@{mongo_service_host(t)}:{MONGO_PORT}/admin" for t in exporter_targets(inv)}


def secrets_to_write(inv: Inventory, kube: Any, dry_run: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Grafana's admin (generated once) and the exporters' URIs (from the mongo stage's monitor user)."""
    import secrets as pysecrets

    from datacloud.errors import UserError
    from datacloud.stages.apps_common import MONGO_MONITOR_SECRET, MONGO_NS, secret_object, secret_value

    out, notes = [], []
    if secret_value(kube, GRAFANA_ADMIN_SECRET, MONITORING_NS, "admin-password") is None:
        out.append(
            secret_object(
                GRAFANA_ADMIN_SECRET,
                MONITORING_NS,
                {"admin-user": "admin", "admin-password": pysecrets.token_urlsafe(24)},
                "grafana",
            )
        )
        notes.append(f"Secret {MONITORING_NS}/{GRAFANA_ADMIN_SECRET} generated (Grafana admin password)")
    password = secret_value(kube, MONGO_MONITOR_SECRET, MONGO_NS, "password")
    if password is None and dry_run:
        # a dry run before the mongo stage ever ran: that stage would create the monitor user first
        notes.append(f"Secret {MONITORING_NS}/{EXPORTER_SECRET} would be written once the mongo stage created its monitor user")
        return out, notes
    if password is None:
        raise UserError(f"Secret {MONGO_NS}/{MONGO_MONITOR_SECRET} does not exist; run the mongo stage before monitoring.")
    want = exporter_uris(inv, password)
    have = {k: secret_value(kube, EXPORTER_SECRET, MONITORING_NS, k) for k in want}
    if have != want:
        out.append(secret_object(EXPORTER_SECRET, MONITORING_NS, want, "mongodb-exporter"))
        notes.append(f"Secret {MONITORING_NS}/{EXPORTER_SECRET} written ({len(want)} exporter URIs)")
    return out, notes


def apply(ctx: Any) -> dict[str, Any]:
    """Namespace and policies, Secrets, kube-prometheus-stack, exporters, monitors, rules, dashboards, Headlamp."""
    inv = ctx.inv
    rendered = render(inv)
    kps, headlamp = rendered.releases
    kube = ctx.kube()
    changes: list[str] = []

    def apply_stems(*stems: str) -> None:
        for stem in stems:
            changes.extend(f"{oid} applied" for oid in kube.apply(rendered.objects[stem]).changed)

    apply_stems("namespace", "networkpolicies")
    objs, notes = secrets_to_write(inv, kube, ctx.dry_run)
    if objs:
        kube.apply(objs)
    changes.extend(notes)
    # The chart brings the CRDs of ServiceMonitor, PodMonitor and PrometheusRule.
    if kube.helm_upgrade(kps):
        changes.append(f"helm release {kps.name} {kps.chart} {kps.version} installed or upgraded")
    apply_stems("mongodb-exporter", "monitors", "rules", "dashboards")
    if kube.helm_upgrade(headlamp):
        changes.append(f"helm release {headlamp.name} {headlamp.chart} {headlamp.version} installed or upgraded")
    apply_stems("headlamp-rbac")
    if not ctx.dry_run:
        for target in exporter_targets(inv):
            kube.rollout_status("deployment", f"mongodb-exporter-{target}", namespace=MONITORING_NS, timeout_s=300)
    return _outcome("apply", changes, ctx.dry_run)


def verify(ctx: Any, *, clock: Any = None, sleep: Any = None) -> dict[str, Any]:
    """Prometheus has our alert rules and at least one healthy target in each of our scrape pools."""
    import json

    from datacloud.errors import TransientError
    from datacloud.stages.apps_common import Poller

    if ctx.dry_run:
        return _outcome("verify", [], True, verified=False)
    kube = ctx.kube()

    def prom(path: str) -> dict[str, Any]:
        res = kube.kubectl(
            "exec",
            "--namespace",
            MONITORING_NS,
            PROMETHEUS_POD,
            "--container",
            "prometheus",
            "--",
            "wget",
            "-qO-",
            f"http://127.0.0.1:9090{path}",
            check=False,
            quiet=True,
        )
        if res.rc != 0:
            raise TransientError(f"Prometheus did not answer {path}")
        return json.loads(res.stdout)

    alerts = {r["name"] for g in prom("/api/v1/rules?type=alert")["data"]["groups"] for r in g["rules"]}
    ours = {r["alert"] for g in yaml.safe_load(rule_file_text(ctx.inv))["groups"] for r in g["rules"]}
    missing = sorted(ours - alerts)
    if missing:
        raise TransientError(f"Prometheus has not loaded the alert rules {', '.join(missing)} yet")
    health: dict[str, str] = {}

    def targets_up() -> tuple[bool, str]:
        active = prom("/api/v1/targets?state=active")["data"]["activeTargets"]
        for pool in scrape_pools(ctx.inv):
            states = [t.get("health") for t in active if t.get("scrapePool", "").startswith(pool)]
            health[pool] = "up" if "up" in states else (states[0] if states else "no target")
        down = [p for p, h in health.items() if h != "up"]
        return not down, ", ".join(f"{p.split('/')[-1]} {h}" for p, h in health.items())

    Poller("Monitoring | Verify | scrape targets", 300, clock=clock, sleep=sleep).run(targets_up, log)
    return _outcome("verify", [], False, verified=True, rules=len(ours), targets=health)


def _steps() -> list[Any]:
    from datacloud.stages._common import Step

    return [Step("apply", apply), Step("verify", verify)]


STEPS = _steps()
