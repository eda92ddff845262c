"""Stage spark: the Kubeflow spark-operator, the `spark` identity, the History Server and Spark Connect.

``render(inv)`` gives everything the stage applies (pure): namespaces
``spark-operator`` (the operator, watching ``spark-jobs`` and ``spark-connect``),
``spark-jobs`` (ServiceAccount ``spark`` bound to a namespaced Role, the History
Server on a shared event-log claim, NetworkPolicies, a ScheduledSparkApplication
example, and ``airflow-submitter``: the namespaced identity Airflow submits
SparkApplications with) and ``spark-connect`` (the operator's SparkConnect server for
notebooks and pipelines, its own identity, an admission policy for the executor
pods it creates, NetworkPolicies letting only notebooks and Airflow reach it).

The run side generates the Connect server's token once (Secret
``spark-connect/spark-connect-token``; rotated only when annotated
``datacloud/rotate=true``), creates the submitter's long-lived token Secret, and
stores both as Airflow connections: ``datacloud_spark_connect`` (Spark Connect
type, the token as password) and ``datacloud_kubernetes_spark`` (a kubeconfig with
the submitter's token, the API server address and CA).
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
    ROTATE_ANNOTATION,
    SPARK_CONNECT_NS,
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

# --- Spark Connect (namespace spark-connect) ---
CONNECT_NAME = "datacloud-connect"  # the SparkConnect object; the operator names pod and Service <name>-server
CONNECT_SERVICE = f"{CONNECT_NAME}-server"
CONNECT_PORT = 15002
CONNECT_SA = "spark-connect"
CONNECT_TOKEN_SECRET = "spark-connect-token"  # noqa: S105 - a Secret name; key `token`, generated at run time
CONNECT_TOKEN_KEY = "token"  # noqa: S105 - a key name
# Our label on the server pod (the operator adds its own): the NetworkPolicies select it, and the
# admission policy admits no pod of the server's identity with a datacloud/ label, so no executor poses as it.
CONNECT_SERVER_LABELS = {"datacloud/connect-role": "server"}
# Labels KubeSpawner puts on notebook pods (the only jupyter pods that may reach the server).
NOTEBOOK_POD_LABELS = {"component": "singleuser-server"}
DRIVER_CONTAINER = "spark-kubernetes-driver"  # the operator's name for the server container
EXECUTOR_CONTAINER = "spark-kubernetes-executor"
CONNECT_USER_ID = "airflow"  # the Spark Connect user id Airflow's sessions carry

# --- Spark submission from Airflow (namespace spark-jobs) ---
SUBMITTER_SA = "airflow-submitter"
SUBMITTER_TOKEN_SECRET = f"{SUBMITTER_SA}-token"


def spark_version() -> str:
    return str(versions()["local"]["spark"])


def image(inv: Inventory | None = None) -> str:
    """The Spark image: ``<images.registry>/spark:<tag>[@digest]`` (datacloud.images.own_image).

    Without an inventory, the repository-relative pin of manifests/versions.yaml.
    """
    from datacloud.images import own_image

    return own_image(inv, "spark")


def job_cpu(inv: Inventory) -> dict[str, str]:
    """The CPU this stage gives drivers and executors; recorded (verify's result) for the pipelines' applications."""
    sp = inv.components.spark
    return {"job_driver_cpu": f"{sp.driver.cpu_m}m", "job_executor_cpu": f"{sp.executor.cpu_m}m"}


def require_registry(inv: Inventory) -> str:
    """The Spark image, or a UserError when it would name no registry (it would come from Docker Hub)."""
    from datacloud.errors import UserError
    from datacloud.images import registry_missing

    problem = registry_missing(inv, ["spark"])
    if problem:
        raise UserError(problem)
    return image(inv)


# Spark's own Python example, in the official image and in the one the lab assembles from the
# pyspark wheel (which has no examples jar): the smoke test and the nightly example run it.
EXAMPLE_PI = "local:///opt/spark/examples/src/main/python/pi.py"


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


def dynamic_allocation(inv: Inventory) -> dict[str, Any]:
    """Executors from min to max of the inventory, with shuffle tracking (no external shuffle service)."""
    sp = inv.components.spark
    return {
        "enabled": True,
        "initialExecutors": sp.min_executors,
        "minExecutors": sp.min_executors,
        "maxExecutors": sp.max_executors,
        "shuffleTrackingEnabled": True,
    }


def application_spec(
    inv: Inventory,
    *,
    name: str,
    main_file: str | None = None,
    main_class: str | None = None,
    args: list[str] | None = None,
    app_type: str = "Python",
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
        "mainApplicationFile": main_file or EXAMPLE_PI,
        "arguments": list(args or []),
        "sparkVersion": spark_version(),
        "restartPolicy": {"type": "Never"},
        "sparkConf": {**spark_conf(inv), **(extra_conf or {})},
        "dynamicAllocation": dynamic_allocation(inv),
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


def connect_host() -> str:
    """The in-cluster DNS name of the Connect server's Service."""
    return f"{CONNECT_SERVICE}.{SPARK_CONNECT_NS}.svc.cluster.local"


def connect_url() -> str:
    """The server's address as a Spark Connect URL (no token: clients add it)."""
    return f"sc://{connect_host()}:{CONNECT_PORT}"


def connect_spec(inv: Inventory) -> dict[str, Any]:
    """The SparkConnect spec: the platform's image, server sized as a driver, executors as the inventory says."""
    sp = inv.components.spark
    d_heap, _d_over = jvm_memory(sp.driver)
    e_heap, e_over = jvm_memory(sp.executor)
    img, policy = image(inv), pull_policy(image(inv))
    pod_security = {"runAsNonRoot": True, "runAsUser": SPARK_USER_ID, "runAsGroup": SPARK_USER_ID, "fsGroup": SPARK_USER_ID,
                    "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    container_security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return {
        "sparkVersion": spark_version(),
        "image": img,
        "sparkConf": {
            # The server authenticates to the API server with its ServiceAccount's mounted token.
            "spark.connect.grpc.binding.port": str(CONNECT_PORT),
            "spark.kubernetes.container.image.pullPolicy": policy,
            "spark.executor.memoryOverhead": e_over,
            "spark.dynamicAllocation.executorIdleTimeout": "60s",
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.prometheus.enabled": "true",
        },
        "server": {
            "cores": max(1, sp.driver.cpu_m // 1000),
            "memory": d_heap,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/part-of": "datacloud", **CONNECT_SERVER_LABELS}},
                "spec": {
                    "serviceAccountName": CONNECT_SA,
                    "securityContext": pod_security,
                    "containers": [
                        {
                            "name": DRIVER_CONTAINER,
                            "image": img,
                            "imagePullPolicy": policy,
                            "resources": resources(sp.driver),
                            "securityContext": container_security,
                            "env": [
                                # Spark Connect reads spark.connect.authenticate.token from this variable.
                                {
                                    "name": "SPARK_CONNECT_AUTHENTICATE_TOKEN",
                                    "valueFrom": {"secretKeyRef": {"name": CONNECT_TOKEN_SECRET, "key": CONNECT_TOKEN_KEY}},
                                },
                                {"name": "SPARK_LOG_DIR", "value": "/tmp/spark-logs"},
                                {"name": "SPARK_PID_DIR", "value": "/tmp"},
                            ],
                        }
                    ],
                },
            },
        },
        "executor": {
            "cores": max(1, sp.executor.cpu_m // 1000),
            "memory": e_heap,
            "instances": sp.min_executors,
            "template": {
                "spec": {
                    "securityContext": pod_security,
                    "containers": [{"name": EXECUTOR_CONTAINER, "securityContext": container_security}],
                },
            },
        },
        "dynamicAllocation": dynamic_allocation(inv),
    }


def submitter_token_secret() -> dict[str, Any]:
    """The long-lived token Secret of ``airflow-submitter`` (the token controller fills it in)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": SUBMITTER_TOKEN_SECRET,
            "namespace": SPARK_JOBS_NS,
            "labels": {"app.kubernetes.io/part-of": "datacloud", "app.kubernetes.io/component": "spark-submit"},
            "annotations": {"kubernetes.io/service-account.name": SUBMITTER_SA},
        },
    }


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
            "jobNamespaces": [SPARK_JOBS_NS, SPARK_CONNECT_NS],
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
        "connect_ns": SPARK_CONNECT_NS,
        "connect_name": CONNECT_NAME,
        "connect_service": CONNECT_SERVICE,
        "connect_port": CONNECT_PORT,
        "connect_sa": CONNECT_SA,
        "connect_token_secret": CONNECT_TOKEN_SECRET,
        "connect_server_labels": CONNECT_SERVER_LABELS,
        "server_label_key": next(iter(CONNECT_SERVER_LABELS)),
        "notebook_labels": NOTEBOOK_POD_LABELS,
        "connect_spec": connect_spec(inv),
        "spark_image": image(inv),
        "submitter_sa": SUBMITTER_SA,
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
    """The verification SparkApplication (Spark's Python pi example), named per run."""
    ctx = _context(inv)
    ctx["app_spec"] = lambda **kw: application_spec(inv, ttl_s=3600, **kw)
    return render_template("spark/smoke.yaml.j2", name=name, **ctx)


# Applied in this order; the last two need the operator's CRDs, so they come after the chart.
BEFORE_CHART = ("namespaces", "rbac", "history-server", "networkpolicies", "connect-admission")
AFTER_CHART = ("scheduled", "connect")
RENDERED = BEFORE_CHART + AFTER_CHART


def services(inv: Inventory) -> dict[str, str]:
    """The navigation links this stage gives the Airflow UI once it ran (through `./dev tunnels`)."""
    from datacloud import tunnels

    return tunnels.links(inv, "spark")


def render(inv: Inventory) -> Rendered:
    ctx = _context(inv)
    objects = {stem: render_template(f"spark/{stem}.yaml.j2", **ctx) for stem in RENDERED}
    return Rendered(objects=objects, releases=[operator_release(inv)])


# --- run side (the stage contract of datacloud.stages: STEPS) -------------------

VERIFY_TIMEOUT_S = 900
HISTORY_TIMEOUT_S = 180
TERMINAL_STATES = {"COMPLETED", "FAILED", "SUBMISSION_FAILED", "FAILING"}


def _applied(changes: list[str], result: Any) -> None:
    changes.extend(f"{oid} applied" for oid in result.changed)


def apply(ctx: Any) -> dict[str, Any]:
    """Namespaces, identities, History Server, policies and tokens; the operator chart; the CRD objects."""
    inv = ctx.inv
    spark_image = require_registry(inv)
    rendered = render(inv)
    kube = ctx.kube()
    changes: list[str] = []
    for stem in BEFORE_CHART:
        _applied(changes, kube.apply(rendered.objects[stem]))
    # Secrets before the server that reads its token: generated once, rotated only when annotated.
    change = converge_connect_token(kube, ctx.dry_run)
    if change:
        changes.append(change)
    _applied(changes, kube.apply([submitter_token_secret()]))
    _job_mongo_secret(kube, changes)
    for release in rendered.releases:
        if kube.helm_upgrade(release):
            changes.append(f"helm release {release.name} {release.chart} {release.version} installed or upgraded")
    for stem in AFTER_CHART:
        _applied(changes, kube.apply(rendered.objects[stem]))
    if not ctx.dry_run:
        kube.rollout_status("deployment", "spark-history-server", namespace=SPARK_JOBS_NS, timeout_s=600)
    return _outcome("apply", changes, ctx.dry_run, storage=storage_classes(inv)["shared"], image=spark_image)


def _job_mongo_secret(kube: Any, changes: list[str]) -> None:
    """The MongoDB URI the pipelines' SparkApplications read (Secret spark-jobs/datacloud-mongo-spark, key
    ``uri``), from the mongo stage's application user; follows a rotated password on the next run."""
    from datacloud.spark import K8S_MONGO_SECRET
    from datacloud.stages.apps_common import mongo_uri_secret

    secret, why = mongo_uri_secret(kube, K8S_MONGO_SECRET, SPARK_JOBS_NS, "spark-jobs")
    if secret is not None:
        kube.apply([secret])
        changes.append(f"Secret {SPARK_JOBS_NS}/{K8S_MONGO_SECRET} written (MongoDB URI for Spark jobs)")
    elif why != "unchanged":
        log.warning("Spark | MongoDB | %s; SparkApplications of the pipelines fail until the stage runs again", why)


# --- tokens and the Airflow connections --------------------------------------------


def new_connect_token() -> str:
    """43 URL-safe characters (256 bits) from the OS's CSPRNG."""
    import secrets

    return secrets.token_urlsafe(32)


def connect_token(kube: Any, obj: dict[str, Any] | None = None) -> str | None:
    """The Connect server's token (masked), or None before the apply step created it; OBJ: the Secret, already read."""
    from datacloud.connections import mask
    from datacloud.stages.apps_common import decoded_value

    if obj is None:
        obj = kube.get_json("secret", CONNECT_TOKEN_SECRET, namespace=SPARK_CONNECT_NS)
    value = decoded_value(obj, CONNECT_TOKEN_KEY)
    if value is not None:
        mask(value)
    return value


def converge_connect_token(kube: Any, dry_run: bool) -> str | None:
    """Create the token Secret once; a re-run keeps it; ``datacloud/rotate=true`` on it asks for a new one."""
    from datacloud.connections import mask
    from datacloud.errors import UserError
    from datacloud.stages.apps_common import secret_object

    obj = kube.get_json("secret", CONNECT_TOKEN_SECRET, namespace=SPARK_CONNECT_NS)
    current = connect_token(kube, obj) if obj is not None else None
    annotation = ((obj or {}).get("metadata") or {}).get("annotations", {}).get(ROTATE_ANNOTATION)
    if annotation not in (None, "true"):
        raise UserError(
            f"Secret {SPARK_CONNECT_NS}/{CONNECT_TOKEN_SECRET} has annotation {ROTATE_ANNOTATION}={annotation[:40]!r}; set it "
            f"to true to rotate the Spark Connect token, or remove it with: kubectl annotate secret --namespace "
            f"{SPARK_CONNECT_NS} {CONNECT_TOKEN_SECRET} {ROTATE_ANNOTATION}-"
        )
    rotate = current is not None and annotation == "true"
    if current is not None and not rotate:
        log.info("Spark | Connect | token Secret %s/%s exists (unchanged)", SPARK_CONNECT_NS, CONNECT_TOKEN_SECRET)
        return None
    would = "would be " if dry_run else ""
    what = f"Secret/{SPARK_CONNECT_NS}/{CONNECT_TOKEN_SECRET} {would}{'rotated' if rotate else 'created'} (Spark Connect token)"
    if dry_run:
        return what
    token = new_connect_token()
    mask(token)
    kube.apply([secret_object(CONNECT_TOKEN_SECRET, SPARK_CONNECT_NS, {CONNECT_TOKEN_KEY: token}, "spark-connect")])
    if rotate:
        kube.kubectl("annotate", "secret", CONNECT_TOKEN_SECRET, "--namespace", SPARK_CONNECT_NS, f"{ROTATE_ANNOTATION}-")
        # The server reads the token at start: a new server pod picks the new one up.
        kube.kubectl("delete", "pod", CONNECT_SERVICE, "--namespace", SPARK_CONNECT_NS, "--ignore-not-found", check=False)
    return what


def connect_connection(token: str) -> dict[str, Any]:
    """The ``datacloud_spark_connect`` connection (the Spark provider's spark_connect type)."""
    return {
        "conn_type": "spark_connect",
        "host": connect_host(),
        "port": CONNECT_PORT,
        "login": CONNECT_USER_ID,
        "password": token,
        "description": (
            "Spark Connect server of the platform (written by provision_platform). The server speaks plain gRPC: "
            "reach it through an SSH forward from the control plane and connect to localhost, where pyspark "
            "sends the token without TLS"
        ),
        "extra": {"use_ssl": False},
    }


SUBMITTER_TOKEN_TIMEOUT_S = 120


def submitter_token(kube: Any, *, clock: Any = None, sleep: Any = None) -> tuple[str, str]:
    """(token, CA in PEM) of ``airflow-submitter``, once the token controller has filled its Secret in."""
    import base64

    from datacloud.connections import mask
    from datacloud.stages.apps_common import Poller

    found: dict[str, str] = {}

    def filled() -> tuple[bool, str]:
        obj = kube.get_json("secret", SUBMITTER_TOKEN_SECRET, namespace=SPARK_JOBS_NS) or {}
        data = obj.get("data") or {}
        if data.get("token") and data.get("ca.crt"):
            found["token"] = base64.b64decode(data["token"]).decode()
            found["ca"] = base64.b64decode(data["ca.crt"]).decode()
            mask(found["token"])
            return True, "token issued"
        return False, "waiting for the token controller" if obj else "Secret not created yet"

    Poller(
        f"Spark | Submitter | {SUBMITTER_TOKEN_SECRET}", SUBMITTER_TOKEN_TIMEOUT_S, interval_s=2, clock=clock, sleep=sleep
    ).run(filled, log)
    return found["token"], found["ca"]


def api_server_address(kube: Any) -> str:
    """The API server URL of the admin kubeconfig on the control plane (the address Airflow uses today)."""
    from datacloud.errors import TransientError

    res = kube.kubectl(
        "config", "view", "--minify", "--output", "jsonpath={.clusters[0].cluster.server}", check=False, quiet=True
    )
    server = (res.stdout or "").strip()
    if res.rc != 0 or not server.startswith("https://"):
        raise TransientError(f"could not read the API server address from the admin kubeconfig (got {server[:60]!r})")
    return server


def submitter_kubeconfig(server: str, ca_pem: str, token: str, cluster: str) -> str:
    """A kubeconfig for ``airflow-submitter``: namespace spark-jobs, the token, the cluster's CA."""
    import base64
    import json

    ca = base64.b64encode(ca_pem.encode()).decode()
    user = f"{SUBMITTER_SA}@{cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster, "user": user, "namespace": SPARK_JOBS_NS}}],
        "current-context": user,
    }
    return json.dumps(doc, indent=2)  # JSON is YAML: the Kubernetes hook loads either


def submit_connection(kubeconfig: str, cluster: str) -> dict[str, Any]:
    """The ``datacloud_kubernetes_spark`` connection (kubernetes type, extra kube_config)."""
    return {
        "conn_type": "kubernetes",
        "description": (
            f"ServiceAccount {SPARK_JOBS_NS}/{SUBMITTER_SA} of cluster {cluster}: SparkApplications in {SPARK_JOBS_NS} "
            "only (written by provision_platform)"
        ),
        "extra": {"kube_config": kubeconfig, "namespace": SPARK_JOBS_NS},
    }


def _same_connection(current: dict[str, Any] | None, fields: dict[str, Any]) -> bool:
    return current is not None and all(current.get(k) == v for k, v in fields.items() if k != "description")


def connections(ctx: Any, *, clock: Any = None, sleep: Any = None) -> dict[str, Any]:
    """Store the Connect token and the submitter's kubeconfig as Airflow connections (unchanged ones untouched)."""
    from datacloud.config import SPARK_CONNECT_CONN_ID, SPARK_SUBMIT_CONN_ID
    from datacloud.connections import get as current_fields
    from datacloud.connections import mask, publish_connection, write_connection
    from datacloud.errors import TransientError

    def _comparable_fields(fields: dict[str, Any]) -> Any:
        # what is stored, as far as it can be read back (the description is not): equal means unchanged
        return lambda conn_id: fields if _same_connection(current_fields(conn_id), fields) else None

    kube = ctx.kube()
    token = connect_token(kube)
    if ctx.dry_run and token is None:
        return _outcome("connections", [f"would store connections {SPARK_CONNECT_CONN_ID}, {SPARK_SUBMIT_CONN_ID}"], True)
    if token is None:
        raise TransientError(f"Secret {SPARK_CONNECT_NS}/{CONNECT_TOKEN_SECRET} is missing; the apply step has not finished")
    cluster = ctx.inv.cluster.name
    if ctx.dry_run and not ((kube.get_json("secret", SUBMITTER_TOKEN_SECRET, namespace=SPARK_JOBS_NS) or {}).get("data") or {}):
        return _outcome("connections", [f"would store connection {SPARK_SUBMIT_CONN_ID} once its token exists"], True)
    sa_token, ca = submitter_token(kube, clock=clock, sleep=sleep)
    kubeconfig = submitter_kubeconfig(api_server_address(kube), ca, sa_token, cluster)
    mask(kubeconfig)
    wanted = {SPARK_CONNECT_CONN_ID: connect_connection(token), SPARK_SUBMIT_CONN_ID: submit_connection(kubeconfig, cluster)}
    changes: list[str] = []
    for conn_id, fields in wanted.items():
        if ctx.dry_run:
            if not _same_connection(current_fields(conn_id), fields):
                changes.append(f"would store connection {conn_id}")
        elif publish_connection(conn_id, fields, _comparable_fields(fields), write_connection):
            changes.append(f"connection {conn_id} stored")
    return _outcome(
        "connections", changes, ctx.dry_run, connect_conn_id=SPARK_CONNECT_CONN_ID, submit_conn_id=SPARK_SUBMIT_CONN_ID
    )


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
        return _outcome("verify", [], True, verified=False, image=spark_image, connect_url=connect_url())
    kube = ctx.kube()
    connect_state = wait_connect_ready(kube, clock=clock, sleep=sleep)
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
        Poller(
            f"Spark | Verify | {name}",
            VERIFY_TIMEOUT_S,
            clock=clock,
            sleep=sleep,
            explain=lambda: kube.why_waiting(SPARK_JOBS_NS),
        ).run(app_state, log)
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
    # `image` and `job_*_cpu` are recorded in the platform state: the flights pipeline's Kubernetes target
    # runs that image at that size. `connect_url` too: the address notebooks and the connect target use (no token).
    return _outcome(
        "verify", [], False, verified=True, application=name, spark_application_id=app_id, image=spark_image,
        connect_url=connect_url(), connect_state=connect_state, **job_cpu(ctx.inv),
    )  # fmt: skip


CONNECT_TIMEOUT_S = 600


def wait_connect_ready(kube: Any, *, clock: Any = None, sleep: Any = None) -> str:
    """Wait until the operator reports the SparkConnect server Ready (its pod answers on 15002)."""
    from datacloud.errors import TransientError
    from datacloud.stages.apps_common import Poller

    def ready() -> tuple[bool, str]:
        obj = kube.get_json("sparkconnect", CONNECT_NAME, namespace=SPARK_CONNECT_NS) or {}
        status = obj.get("status") or {}
        state = status.get("state") or "not reconciled yet"
        if state == "Failed":
            message = next((c.get("message") for c in status.get("conditions") or [] if c.get("message")), "no message")
            raise TransientError(f"the Spark Connect server {SPARK_CONNECT_NS}/{CONNECT_NAME} failed: {message}")
        executors = status.get("executors") or {}
        return state == "Ready", f"{state}, executors {executors or 'none'}"

    return Poller(
        f"Spark | Verify | SparkConnect {CONNECT_NAME}",
        CONNECT_TIMEOUT_S,
        clock=clock,
        sleep=sleep,
        explain=lambda: kube.why_waiting(SPARK_CONNECT_NS),
    ).run(ready, log)


def _steps() -> list[Any]:
    from datacloud.stages._common import Step

    return [Step("apply", apply), Step("connections", connections), Step("verify", verify)]


STEPS = _steps()
