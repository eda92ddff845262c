"""Stage spark: the Kubeflow spark-operator, the `spark` identity and the History Server.

``render(inv)`` gives everything the stage applies (pure): namespaces
``spark-operator`` (the operator, watching only ``spark-jobs``) and ``spark-jobs``
(ServiceAccount ``spark`` bound to a namespaced Role, the History Server on a
shared event-log claim, NetworkPolicies, a ScheduledSparkApplication example).
``application_spec(inv, ...)`` is the SparkApplication spec every job here shares:
event logs to the History Server's claim, dynamic allocation with shuffle tracking
(min/max executors from the inventory), pod sizes from the inventory.
"""

from __future__ import annotations

import logging
from typing import Any

from datacloud.images import pull_policy
from datacloud.inventory import Inventory, Resources
from datacloud.render import Release, Rendered, render_template, versions
from datacloud.stages.apps_common import (
    JUPYTER_NS,
    SPARK_JOBS_NS,
    SPARK_OPERATOR_NS,
    labels,
    netpol_context,
    resources,
    storage_classes,
)

log = logging.getLogger(__name__)

OPERATOR_RELEASE = "spark-operator"
EVENT_CLAIM = "spark-events"
EVENT_MOUNT = "/spark-events"
EVENT_DIR = f"{EVENT_MOUNT}/apps"
DRIVER_PORT = 7078
BLOCK_MANAGER_PORT = 7079
HISTORY_PORT = 18080
HISTORY_SERVICE = "spark-history-server"
SPARK_USER_ID = 185  # the `spark` user of the official image

# Labels the spark-operator chart puts on its pods (chart template _helpers.tpl:
# spark-operator.selectorLabels + component); see manifests/monitoring/chart-labels.yaml.
OPERATOR_CONTROLLER_LABELS = {
    "app.kubernetes.io/name": "spark-operator",
    "app.kubernetes.io/instance": OPERATOR_RELEASE,
    "app.kubernetes.io/component": "controller",
}
OPERATOR_WEBHOOK_LABELS = {**OPERATOR_CONTROLLER_LABELS, "app.kubernetes.io/component": "webhook"}
HISTORY_LABELS = labels("spark-history", "spark-history-server")


def spark_version() -> str:
    return str(versions()["local"]["spark"])


def image(inv: Inventory | None = None) -> str:
    """The Spark image: ``<images.registry>/spark:<tag>[@digest]`` (datacloud.images.own_image).

    Without an inventory, the repository-relative pin of manifests/versions.yaml.
    """
    from datacloud.images import own_image

    return own_image(inv, "spark")


def require_registry(inv: Inventory) -> str:
    """The Spark image, or a UserError when it would name no registry (it would come from Docker Hub)."""
    from datacloud.errors import UserError
    from datacloud.images import registry_missing

    problem = registry_missing(inv, ["spark"])
    if problem:
        raise UserError(problem)
    return image(inv)


def examples_jar() -> str:
    scala = versions()["local"]["scala_binary"]
    return f"local:///opt/spark/examples/jars/spark-examples_{scala}-{spark_version()}.jar"


def jvm_memory(res: Resources) -> tuple[str, str]:
    """(heap, overhead) so that heap + overhead == the pod's memory request, as Spark sizes pods."""
    overhead = max(384, res.memory_mb // 10)
    heap = res.memory_mb - overhead
    if heap < 256:
        raise ValueError(f"{res.memory_mb} MiB leaves less than 256 MiB of heap after Spark's {overhead} MiB overhead")
    return f"{heap}m", f"{overhead}m"


def spark_conf(inv: Inventory) -> dict[str, str]:
    """sparkConf shared by every application in spark-jobs (strings, as the CRD wants)."""
    sp = inv.components.spark
    return {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": f"file:{EVENT_DIR}",
        "spark.driver.port": str(DRIVER_PORT),
        "spark.blockManager.port": str(BLOCK_MANAGER_PORT),
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.minExecutors": str(sp.min_executors),
        "spark.dynamicAllocation.maxExecutors": str(sp.max_executors),
        "spark.dynamicAllocation.executorIdleTimeout": "60s",
        "spark.ui.prometheus.enabled": "true",
        "spark.kubernetes.submission.waitAppCompletion": "false",
    }


def application_spec(
    inv: Inventory,
    *,
    name: str,
    main_file: str | None = None,
    main_class: str | None = "org.apache.spark.examples.SparkPi",
    args: list[str] | None = None,
    app_type: str = "Scala",
    extra_conf: dict[str, str] | None = None,
    ttl_s: int | None = None,
) -> dict[str, Any]:
    """The spec of a SparkApplication (or a ScheduledSparkApplication template) in spark-jobs."""
    sp = inv.components.spark
    d_heap, d_over = jvm_memory(sp.driver)
    e_heap, e_over = jvm_memory(sp.executor)
    pod_labels = {"app.kubernetes.io/part-of": "datacloud", "datacloud/spark-app": name}
    security = {"runAsNonRoot": True, "runAsUser": SPARK_USER_ID, "allowPrivilegeEscalation": False}
    spec: dict[str, Any] = {
        "type": app_type,
        "mode": "cluster",
        "image": image(inv),
        "imagePullPolicy": pull_policy(image(inv)),
        "mainApplicationFile": main_file or examples_jar(),
        "arguments": list(args or []),
        "sparkVersion": spark_version(),
        "restartPolicy": {"type": "Never"},
        "sparkConf": {**spark_conf(inv), **(extra_conf or {})},
        "dynamicAllocation": {
            "enabled": True,
            "initialExecutors": sp.min_executors,
            "minExecutors": sp.min_executors,
            "maxExecutors": sp.max_executors,
            "shuffleTrackingEnabled": True,
        },
        "volumes": [{"name": "spark-events", "persistentVolumeClaim": {"claimName": EVENT_CLAIM}}],
        "driver": {
            "cores": max(1, sp.driver.cpu_m // 1000),
            "coreRequest": f"{sp.driver.cpu_m}m",
            "memory": d_heap,
            "memoryOverhead": d_over,
            "serviceAccount": "spark",
            "labels": {**pod_labels, "datacloud/spark-role": "driver"},
            "securityContext": security,
            "volumeMounts": [{"name": "spark-events", "mountPath": EVENT_MOUNT}],
        },
        "executor": {
            "cores": max(1, sp.executor.cpu_m // 1000),
            "coreRequest": f"{sp.executor.cpu_m}m",
            "instances": max(1, sp.min_executors),
            "memory": e_heap,
            "memoryOverhead": e_over,
            "labels": {**pod_labels, "datacloud/spark-role": "executor"},
            "securityContext": security,
        },
    }
    if main_class:
        spec["mainClass"] = main_class
    if app_type == "Python":
        spec["pythonVersion"] = "3"
    if ttl_s is not None:
        spec["timeToLiveSeconds"] = ttl_s
    return spec


def operator_release(inv: Inventory) -> Release:
    chart = versions()["spark"]["operator_chart"]
    op = resources(inv.components.spark.operator)
    security = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    values = {
        "controller": {
            "replicas": 1,
            "workers": 4,
            "resources": op,
            "securityContext": security,
            "uiService": {"enable": True},
        },
        "webhook": {"enable": True, "replicas": 1, "port": 9443, "resources": op, "securityContext": security},
        # Our own ServiceAccount `spark` and its namespaced Role live in spark/rbac.yaml.j2.
        "spark": {
            "jobNamespaces": [SPARK_JOBS_NS],
            "serviceAccount": {"create": False, "name": "spark"},
            "rbac": {"create": False},
        },
        # Scraped through our PodMonitor (monitoring/monitors.yaml.j2), not the chart's.
        "prometheus": {
            "metrics": {"enable": True, "port": 8080, "portName": "metrics", "endpoint": "/metrics"},
            "podMonitor": {"create": False},
        },
    }
    return Release(OPERATOR_RELEASE, SPARK_OPERATOR_NS, chart["name"], chart["repo"], str(chart["version"]), values)


def _context(inv: Inventory) -> dict[str, Any]:
    sp = inv.components.spark
    heap_mb = max(256, int(sp.history_server.limit_mb * 0.6))
    return {
        "operator_ns": SPARK_OPERATOR_NS,
        "jobs_ns": SPARK_JOBS_NS,
        "jupyter_ns": JUPYTER_NS,
        "spark": sp,
        "image": image(inv),
        "pull_policy": pull_policy(image(inv)),
        "classes": storage_classes(inv),
        "event_claim": EVENT_CLAIM,
        "event_dir": EVENT_DIR,
        "history_labels": HISTORY_LABELS,
        "history_resources": resources(sp.history_server),
        "history_heap_mb": heap_mb,
        "init_resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        "operator_controller_labels": OPERATOR_CONTROLLER_LABELS,
        "operator_webhook_labels": OPERATOR_WEBHOOK_LABELS,
        "driver_port": DRIVER_PORT,
        "block_manager_port": BLOCK_MANAGER_PORT,
        "net": netpol_context(inv),
        "app_spec": lambda **kw: application_spec(inv, **kw),
    }


def render_smoke(inv: Inventory, name: str) -> list[dict[str, Any]]:
    """The verification SparkApplication (a short SparkPi), named per run."""
    ctx = _context(inv)
    ctx["app_spec"] = lambda **kw: application_spec(inv, ttl_s=3600, **kw)
    return render_template("spark/smoke.yaml.j2", name=name, **ctx)


def render(inv: Inventory) -> Rendered:
    ctx = _context(inv)
    objects = {
        stem: render_template(f"spark/{stem}.yaml.j2", **ctx)
        for stem in ("namespaces", "rbac", "history-server", "networkpolicies", "scheduled")
    }
    return Rendered(objects=objects, releases=[operator_release(inv)])


# --- run side (the stage contract of datacloud.stages: STEPS) -------------------

VERIFY_TIMEOUT_S = 900
HISTORY_TIMEOUT_S = 180
TERMINAL_STATES = {"COMPLETED", "FAILED", "SUBMISSION_FAILED", "FAILING"}


def _applied(changes: list[str], result: Any) -> None:
    changes.extend(f"{oid} applied" for oid in result.changed)


def apply(ctx: Any) -> dict[str, Any]:
    """Namespaces, identity, History Server and policies; the operator chart; the scheduled example."""
    inv = ctx.inv
    spark_image = require_registry(inv)
    rendered = render(inv)
    kube = ctx.kube()
    changes: list[str] = []
    for stem in ("namespaces", "rbac", "history-server", "networkpolicies"):
        _applied(changes, kube.apply(rendered.objects[stem]))
    for release in rendered.releases:
        if kube.helm_upgrade(release):
            changes.append(f"helm release {release.name} {release.chart} {release.version} installed or upgraded")
    # The ScheduledSparkApplication needs the operator's CRDs, so it comes after the chart.
    _applied(changes, kube.apply(rendered.objects["scheduled"]))
    if not ctx.dry_run:
        kube.rollout_status("deployment", "spark-history-server", namespace=SPARK_JOBS_NS, timeout_s=600)
    return _outcome("apply", changes, ctx.dry_run, storage=storage_classes(inv)["shared"], image=spark_image)


def _outcome(step: str, changes: list[str], dry_run: bool, **facts: Any) -> dict[str, Any]:
    from datacloud.stages._common import outcome

    return outcome("spark", step, changes, dry_run, **facts)


def history_applications(kube: Any) -> list[dict[str, Any]]:
    """The History Server's application list, through the API server's service proxy."""
    import json

    path = f"/api/v1/namespaces/{SPARK_JOBS_NS}/services/http:{HISTORY_SERVICE}:{HISTORY_PORT}/proxy/api/v1/applications"
    res = kube.kubectl("get", "--raw", path, check=False, quiet=True)
    if res.rc != 0:
        return []
    try:
        return json.loads(res.stdout or "[]")
    except ValueError:
        return []


def verify(ctx: Any, *, name: str | None = None, clock: Any = None, sleep: Any = None) -> dict[str, Any]:
    """Submit a small SparkApplication, wait for COMPLETED, then find its run in the History Server."""
    import time

    from datacloud.errors import TransientError
    from datacloud.stages.apps_common import Poller

    spark_image = require_registry(ctx.inv)
    if ctx.dry_run:
        return _outcome("verify", [], True, verified=False, image=spark_image)
    kube = ctx.kube()
    name = name or "datacloud-verify-" + time.strftime("%Y%m%dt%H%M%S", time.gmtime())
    app = render_smoke(ctx.inv, name)
    kube.apply(app)
    log.info("Spark | Verify | submitted SparkApplication %s/%s", SPARK_JOBS_NS, name)
    state: dict[str, Any] = {}

    def app_state() -> tuple[bool, str]:
        obj = kube.get_json("sparkapplication", name, namespace=SPARK_JOBS_NS) or {}
        status = obj.get("status") or {}
        state.update(status)
        current = (status.get("applicationState") or {}).get("state") or "PENDING"
        executors = status.get("executorState") or {}
        return current in TERMINAL_STATES, f"{current}, {len(executors)} executor(s)"

    try:
        Poller(f"Spark | Verify | {name}", VERIFY_TIMEOUT_S, clock=clock, sleep=sleep).run(app_state, log)
        final = (state.get("applicationState") or {}).get("state")
        if final != "COMPLETED":
            message = (state.get("applicationState") or {}).get("errorMessage") or "no error message"
            raise TransientError(f"the verification SparkApplication {name} ended {final}: {message}")
        app_id = state.get("sparkApplicationId")
        if not app_id:
            raise TransientError(f"the verification SparkApplication {name} completed without a sparkApplicationId")

        def in_history() -> tuple[bool, str]:
            apps = history_applications(kube)
            found = [a for a in apps if a.get("id") == app_id]
            done = bool(found) and all(att.get("completed") for att in found[0].get("attempts") or [{}])
            return done, f"{len(apps)} application(s) listed, {app_id} {'found' if found else 'not yet listed'}"

        Poller("Spark | Verify | History Server", HISTORY_TIMEOUT_S, clock=clock, sleep=sleep).run(in_history, log)
    finally:
        kube.kubectl("delete", "sparkapplication", name, "--namespace", SPARK_JOBS_NS, "--ignore-not-found", check=False)
    # `image` is recorded in the platform state: the flights pipeline's Kubernetes target runs it.
    return _outcome("verify", [], False, verified=True, application=name, spark_application_id=app_id, image=spark_image)


def _steps() -> list[Any]:
    from datacloud.stages._common import Step

    return [Step("apply", apply), Step("verify", verify)]


STEPS = _steps()
