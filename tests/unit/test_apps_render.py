"""Render of the spark, jupyter and monitoring stages: schemas, policy, sizes, selectors."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from datacloud import capacity
from datacloud.stages import jupyter, monitoring, spark
from datacloud.stages.apps_common import JUPYTER_NS, MONITORING_NS, SPARK_CONNECT_NS, SPARK_JOBS_NS, SPARK_OPERATOR_NS
from tests.helpers.kube_schema import containers, crd_schema, validate_object
from tests.unit.apps_fixtures import all_objects, by_kind, inventories, rendered, selects

INVENTORIES = ["reference", "three-nodes", "single-local-path"]


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_every_object_validates(inv_name: str) -> None:
    inv = inventories()[inv_name]
    objs = all_objects(inv_name)
    assert len(objs) > 30
    for obj in objs:
        validate_object(obj, inv.cluster.kubernetes_version)


def test_schemas_reject_what_we_would_get_wrong() -> None:
    """Core schemas and the charts' CRDs are strict: a typo or a wrong type fails (so the tests above can fail)."""
    objs = all_objects("reference")
    pol = by_kind(objs, "NetworkPolicy")[0]
    with pytest.raises(AssertionError):
        validate_object({**pol, "spec": {**pol["spec"], "policyType": ["Ingress"]}}, "1.34.2")
    sched = by_kind(objs, "ScheduledSparkApplication")[0]
    bad = {**sched, "spec": {**sched["spec"], "concurrencyPolicy": ["Forbid"]}}
    with pytest.raises(AssertionError, match="concurrencyPolicy"):
        validate_object(bad, "1.34.2")
    bad = {**sched, "spec": {k: v for k, v in sched["spec"].items() if k != "template"}}
    with pytest.raises(AssertionError, match="'template' is a required property"):
        validate_object(bad, "1.34.2")
    sm = by_kind(objs, "ServiceMonitor")[0]
    bad = {**sm, "spec": {**sm["spec"], "endpoint": sm["spec"]["endpoints"]}}
    with pytest.raises(AssertionError, match="endpoint"):
        validate_object(bad, "1.34.2")
    rule = by_kind(objs, "PrometheusRule")[0]
    group = rule["spec"]["groups"][0]
    no_expr = {k: v for k, v in group["rules"][0].items() if k != "expr"}
    bad = {**rule, "spec": {"groups": [{**group, "rules": [no_expr]}]}}
    with pytest.raises(AssertionError, match="'expr' is a required property"):
        validate_object(bad, "1.34.2")


def test_verification_application_matches_the_application_crd() -> None:
    inv = inventories()["reference"]
    (app,) = spark.render_smoke(inv, "datacloud-verify-20260101t000000")
    assert app["kind"] == "SparkApplication"
    assert app["metadata"]["namespace"] == SPARK_JOBS_NS
    assert crd_schema("SparkApplication", app["apiVersion"]) is not None
    validate_object(app, inv.cluster.kubernetes_version)
    # the same spec is also a valid template of a ScheduledSparkApplication
    (sched,) = by_kind(all_objects("reference"), "ScheduledSparkApplication")
    validate_object({**sched, "spec": {**sched["spec"], "template": app["spec"]}}, inv.cluster.kubernetes_version)
    assert app["spec"]["timeToLiveSeconds"] > 0


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_spark_applications_use_inventory_executors_and_event_logs(inv_name: str) -> None:
    inv = inventories()[inv_name]
    sp = inv.components.spark
    (sched,) = by_kind(all_objects(inv_name), "ScheduledSparkApplication")
    assert sched["spec"]["concurrencyPolicy"] == "Forbid"
    spec = sched["spec"]["template"]
    dyn = spec["dynamicAllocation"]
    assert (dyn["enabled"], dyn["shuffleTrackingEnabled"]) == (True, True)
    assert (dyn["minExecutors"], dyn["maxExecutors"]) == (sp.min_executors, sp.max_executors)
    conf = spec["sparkConf"]
    assert conf["spark.dynamicAllocation.shuffleTracking.enabled"] == "true"
    assert conf["spark.eventLog.dir"] == f"file:{spark.EVENT_DIR}"
    assert spec["driver"]["serviceAccount"] == "spark"
    assert {"name": "spark-events", "persistentVolumeClaim": {"claimName": spark.EVENT_CLAIM}} in spec["volumes"]
    assert spec["driver"]["volumeMounts"] == [{"name": "spark-events", "mountPath": spark.EVENT_MOUNT}]
    # heap + overhead is exactly what the inventory (and the capacity planner) says a pod requests
    for role, res in (("driver", sp.driver), ("executor", sp.executor)):
        mem = int(spec[role]["memory"].rstrip("m")) + int(spec[role]["memoryOverhead"].rstrip("m"))
        assert mem == res.memory_mb


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_history_server_reads_the_shared_event_claim(inv_name: str) -> None:
    inv = inventories()[inv_name]
    objs = all_objects(inv_name)
    (pvc,) = [o for o in by_kind(objs, "PersistentVolumeClaim") if o["metadata"]["name"] == spark.EVENT_CLAIM]
    if inv.storage_backend == "rook-ceph":
        assert pvc["spec"]["storageClassName"] == "rook-cephfs"
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
        assert pvc["spec"]["storageClassName"] == "local-path"
    (dep,) = [o for o in by_kind(objs, "Deployment") if o["metadata"]["name"] == "spark-history-server"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == spark.EVENT_CLAIM
    assert f"logDirectory=file:{spark.EVENT_DIR}" in pod["containers"][0]["env"][2]["value"]
    (svc,) = [o for o in by_kind(objs, "Service") if o["metadata"]["name"] == spark.HISTORY_SERVICE]
    assert selects({"matchLabels": svc["spec"]["selector"]}, dep["spec"]["template"]["metadata"]["labels"])
    assert svc["spec"]["ports"][0]["port"] == spark.HISTORY_PORT


def test_spark_identity_is_namespaced() -> None:
    objs = all_objects("reference")
    (role,) = [o for o in by_kind(objs, "Role") if o["metadata"]["name"] == "spark-driver"]
    assert role["metadata"]["namespace"] == SPARK_JOBS_NS
    assert set(role["rules"][0]["resources"]) == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    assert role["rules"][0]["apiGroups"] == [""]
    (binding,) = [o for o in by_kind(objs, "RoleBinding") if o["metadata"]["name"] == "spark-driver"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "spark", "namespace": SPARK_JOBS_NS}]
    rel = rendered("reference")["spark"].releases[0]
    assert rel.values["spark"]["jobNamespaces"] == [SPARK_JOBS_NS, SPARK_CONNECT_NS]
    assert rel.values["spark"]["rbac"]["create"] is False


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_spark_connect_server_runs_our_image_with_kubernetes_executors(inv_name: str) -> None:
    inv = inventories()[inv_name]
    sp = inv.components.spark
    (conn,) = by_kind(all_objects(inv_name), "SparkConnect")
    assert conn["metadata"] == {
        "name": spark.CONNECT_NAME,
        "namespace": SPARK_CONNECT_NS,
        "labels": {"app.kubernetes.io/part-of": "datacloud"},
    }
    assert crd_schema("SparkConnect", conn["apiVersion"]) is not None  # validated against the pinned operator's CRD
    spec = conn["spec"]
    assert spec["image"] == spark.image(inv) and spec["sparkVersion"] == spark.spark_version()
    dyn = spec["dynamicAllocation"]
    assert (dyn["enabled"], dyn["shuffleTrackingEnabled"]) == (True, True)
    assert (dyn["minExecutors"], dyn["maxExecutors"]) == (sp.min_executors, sp.max_executors)
    server = spec["server"]["template"]["spec"]
    assert server["serviceAccountName"] == spark.CONNECT_SA
    (container,) = server["containers"]
    assert container["name"] == "spark-kubernetes-driver" and container["image"] == spark.image(inv)
    token = [e for e in container["env"] if e["name"] == "SPARK_CONNECT_AUTHENTICATE_TOKEN"]
    assert token == [{"name": "SPARK_CONNECT_AUTHENTICATE_TOKEN",
                      "valueFrom": {"secretKeyRef": {"name": spark.CONNECT_TOKEN_SECRET, "key": "token"}}}]  # fmt: skip
    assert "spark.connect.authenticate.token" not in spec["sparkConf"]  # never in the object or the command line
    assert spec["sparkConf"]["spark.connect.grpc.binding.port"] == str(spark.CONNECT_PORT)
    assert spec["server"]["template"]["metadata"]["labels"][next(iter(spark.CONNECT_SERVER_LABELS))] == "server"
    # heap + overhead of the server is the inventory's driver size, which the pod requests
    assert container["resources"]["requests"]["memory"] == f"{sp.driver.memory_mb}Mi"
    assert int(spec["server"]["memory"].rstrip("m")) + 384 <= sp.driver.memory_mb


def test_spark_connect_identity_manages_executor_pods_in_its_namespace_only() -> None:
    objs = all_objects("reference")
    (role,) = [o for o in by_kind(objs, "Role") if o["metadata"]["name"] == "spark-connect-executors"]
    assert role["metadata"]["namespace"] == SPARK_CONNECT_NS
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("pods", "create") in granted and ("configmaps", "create") in granted
    assert not {r for r, _v in granted} - {"pods", "configmaps", "persistentvolumeclaims"}
    assert ("persistentvolumeclaims", "create") not in granted and not [g for g in granted if g[0] == "services"]
    (binding,) = [o for o in by_kind(objs, "RoleBinding") if o["metadata"]["name"] == "spark-connect-executors"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spark.CONNECT_SA, "namespace": SPARK_CONNECT_NS}]
    (vap,) = by_kind(objs, "ValidatingAdmissionPolicy")
    (cond,) = vap["spec"]["matchConditions"]
    assert cond["expression"] == 'request.userInfo.username == "system:serviceaccount:spark-connect:spark-connect"'
    (vapb,) = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    assert vapb["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": SPARK_CONNECT_NS}
    rules = " ".join(v["expression"] for v in vap["spec"]["validations"])
    assert "secretKeyRef" in rules and "secretRef" in rules and "has(s.serviceAccountToken)" in rules
    assert "has(v.secret)" not in rules and "persistentVolumeClaim" not in rules


def test_airflow_submits_spark_with_a_namespaced_identity() -> None:
    objs = all_objects("reference")
    (sa,) = [o for o in by_kind(objs, "ServiceAccount") if o["metadata"]["name"] == spark.SUBMITTER_SA]
    assert sa["metadata"]["namespace"] == SPARK_JOBS_NS and sa["automountServiceAccountToken"] is False
    (role,) = [o for o in by_kind(objs, "Role") if o["metadata"]["name"] == spark.SUBMITTER_SA]
    assert role["metadata"]["namespace"] == SPARK_JOBS_NS
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("sparkoperator.k8s.io", "sparkapplications", "create") in granted
    assert ("", "pods/log", "get") in granted
    assert not [g for g in granted if g[1] == "secrets" or g[2] in ("*", "escalate", "bind", "impersonate")]
    assert not [g for g in granted if g[1] == "pods" and g[2] not in ("get", "list", "watch")]
    secret = spark.submitter_token_secret()
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": spark.SUBMITTER_SA}
    assert "data" not in secret and "stringData" not in secret  # the token controller writes the token


# --- policy ------------------------------------------------------------------


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_no_cluster_admin_for_workloads(inv_name: str) -> None:
    objs = all_objects(inv_name)
    for crb in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding"):
        assert crb["roleRef"]["name"] != "cluster-admin", crb["metadata"]["name"]
    (headlamp,) = by_kind(objs, "ClusterRoleBinding")
    assert headlamp["roleRef"]["name"] == "view"
    for rel in (r for stage in rendered(inv_name).values() for r in stage.releases):
        text = yaml.safe_dump(rel.values)
        assert "cluster-admin" not in text, rel.name
    assert rendered(inv_name)["monitoring"].releases[1].values["clusterRoleBinding"]["create"] is False


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_every_namespace_we_create_denies_by_default(inv_name: str) -> None:
    objs = all_objects(inv_name)
    namespaces = {o["metadata"]["name"] for o in by_kind(objs, "Namespace")}
    assert namespaces == {SPARK_OPERATOR_NS, SPARK_JOBS_NS, SPARK_CONNECT_NS, JUPYTER_NS, MONITORING_NS}
    policies = by_kind(objs, "NetworkPolicy")
    for ns in namespaces:
        mine = [p for p in policies if p["metadata"]["namespace"] == ns]
        deny = [
            p
            for p in mine
            if p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"{ns} has no default-deny NetworkPolicy"
        allows = [p for p in mine if p["spec"].get("ingress") or p["spec"].get("egress")]
        assert len(allows) >= 2, f"{ns} has no explicit allows"


def test_no_dummy_authenticator() -> None:
    values = rendered("reference")["jupyter"].releases[0].values
    auth = values["hub"]["config"]["JupyterHub"]["authenticator_class"]
    assert "dummy" not in auth.lower()
    assert auth == "nativeauthenticator.NativeAuthenticator"
    assert values["hub"]["config"]["NativeAuthenticator"]["open_signup"] is False
    assert "DummyAuthenticator" not in yaml.safe_dump(values)


SECRETISH = re.compile(r"(pass(word)?|secret|token|apikey|api_key|credential)", re.I)


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_no_literal_secret(inv_name: str) -> None:
    stages = rendered(inv_name)
    docs = [o for r in stages.values() for o in r.all_objects()] + [r.values for s in stages.values() for r in s.releases]
    assert not [o for o in by_kind(docs[: len(all_objects(inv_name))], "Secret")], (
        "secrets are created at run time, never rendered"
    )
    for doc in docs:
        for path, value in _walk(doc):
            if not isinstance(value, str):
                continue
            assert not re.search(r"mongodb(\+srv)?://[^/\s]*:[^@/\s]+@", value), f"credentials in a URI at {path}"
            leaf = path.rsplit(".", 1)[-1]
            if SECRETISH.search(leaf) and not leaf.endswith(("Key", "Secret", "Ref", "Name")):
                pytest.fail(f"literal secret-like value at {path}")


# --- sizes: what the manifests request is what the capacity planner counts ---


def _requests(res: dict[str, Any]) -> tuple[int, int]:
    r = res["requests"]
    return int(r["cpu"].rstrip("m")), int(r["memory"].rstrip("Mi"))


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_requests_equal_the_capacity_catalogue(inv_name: str) -> None:
    inv = inventories()[inv_name]
    cat = {w.name: w for w in capacity.catalogue(inv)}
    stages = rendered(inv_name)
    objs = all_objects(inv_name)

    def pod_total(name_prefix: str) -> tuple[int, int, int]:
        deps = [o for o in by_kind(objs, "Deployment") if o["metadata"]["name"].startswith(name_prefix)]
        cpu = mem = 0
        for d in deps:
            for c in d["spec"]["template"]["spec"]["containers"]:
                c_cpu, c_mem = _requests(c["resources"])
                cpu, mem = cpu + c_cpu, mem + c_mem
        return len(deps), cpu, mem

    n, cpu, mem = pod_total("spark-history-server")
    w = cat["spark-history-server"]
    assert (n, cpu, mem) == (w.replicas, w.cpu_m, w.memory_mb)
    n, cpu, mem = pod_total("mongodb-exporter-")
    w = cat["mongodb-exporter"]
    assert (n, cpu, mem) == (w.replicas, w.replicas * w.cpu_m, w.replicas * w.memory_mb)

    op = stages["spark"].releases[0].values
    for part in ("controller", "webhook"):
        assert _requests(op[part]["resources"]) == (cat[f"spark-operator-{part}"].cpu_m, cat[f"spark-operator-{part}"].memory_mb)
    hub = stages["jupyter"].releases[0].values
    assert _requests(hub["hub"]["resources"]) == (cat["hub"].cpu_m, cat["hub"].memory_mb)
    assert _requests(hub["proxy"]["chp"]["resources"]) == (cat["proxy"].cpu_m, cat["proxy"].memory_mb)
    kps = stages["monitoring"].releases[0].values
    reload_cpu, reload_mem = _requests(kps["prometheusOperator"]["prometheusConfigReloader"]["resources"])
    p_cpu, p_mem = _requests(kps["prometheus"]["prometheusSpec"]["resources"])
    assert (p_cpu + reload_cpu, p_mem + reload_mem) == (cat["prometheus"].cpu_m, cat["prometheus"].memory_mb)
    a_cpu, a_mem = _requests(kps["alertmanager"]["alertmanagerSpec"]["resources"])
    assert (a_cpu + reload_cpu, a_mem + reload_mem) == (cat["alertmanager"].cpu_m, cat["alertmanager"].memory_mb)
    g_cpu, g_mem = _requests(kps["grafana"]["resources"])
    s_cpu, s_mem = _requests(kps["grafana"]["sidecar"]["resources"])
    assert (g_cpu + s_cpu, g_mem + s_mem) == (cat["grafana"].cpu_m, cat["grafana"].memory_mb)
    for key, name in (("kube-state-metrics", "kube-state-metrics"), ("prometheus-node-exporter", "node-exporter")):
        assert _requests(kps[key]["resources"]) == (cat[name].cpu_m, cat[name].memory_mb)
    assert _requests(stages["monitoring"].releases[1].values["resources"]) == (cat["headlamp"].cpu_m, cat["headlamp"].memory_mb)
    # no chart extras the catalogue does not count
    assert hub["prePuller"]["continuous"]["enabled"] is False
    assert hub["scheduling"]["userScheduler"]["enabled"] is False


@pytest.mark.parametrize("inv_name", INVENTORIES)
def test_every_container_has_requests_and_a_memory_limit(inv_name: str) -> None:
    for obj in all_objects(inv_name):
        for c in containers(obj):
            assert c["resources"]["requests"]["cpu"], obj["metadata"]["name"]
            assert c["resources"]["requests"]["memory"], obj["metadata"]["name"]
            assert c["resources"]["limits"]["memory"], obj["metadata"]["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_reference_cluster_platform_fits_the_budget() -> None:
    plan = capacity.plan(inventories()["reference"])
    assert plan.ok, plan.problems
    assert plan.platform_share <= 0.60


def test_images_are_pinned() -> None:
    for obj in all_objects("reference"):
        for c in containers(obj):
            assert ":" in c["image"], c["image"]
            assert not c["image"].endswith(":latest"), c["image"]
    for stage in rendered("reference").values():
        for rel in stage.releases:
            assert re.fullmatch(r"\d+\.\d+\.\d+", rel.version), (rel.name, rel.version)
            assert rel.repo.startswith("https://")


def test_stage_modules_render_through_the_registry() -> None:
    from datacloud.render import render_stage

    inv = inventories()["reference"]
    for name in ("spark", "jupyter", "monitoring"):
        assert render_stage(name, inv).all_objects(), name
    assert (
        jupyter.ADMIN_USER in rendered("reference")["jupyter"].releases[0].values["hub"]["config"]["Authenticator"]["admin_users"]
    )
    assert monitoring.KPS_RELEASE == "kube-prometheus-stack"


def test_names_shared_with_the_mongo_stage_agree() -> None:
    """apps_common names the mongo stage's objects; when that stage is present, they must match."""
    from datacloud.stages import apps_common as ac

    mongo = pytest.importorskip("datacloud.stages.mongo")
    assert (mongo.NAMESPACE, mongo.CLUSTER, mongo.MONGO_PORT) == (ac.MONGO_NS, ac.MONGO_CLUSTER, ac.MONGO_PORT)
    users = {u["name"]: u["secret"] for u in mongo.USERS}
    assert users[ac.MONGO_APP_USER] == ac.MONGO_APP_SECRET
    assert users[ac.MONGO_MONITOR_USER] == ac.MONGO_MONITOR_SECRET
    assert mongo.mongos_host() == ac.mongo_service_host("mongos")


def test_api_server_may_call_webhooks_and_proxy_to_the_history_server() -> None:
    """The API server's traffic comes from a node address or, across the overlay, a tunnel address."""
    inv = inventories()["reference"]
    pols = {p["metadata"]["name"]: p for p in by_kind(all_objects("reference"), "NetworkPolicy")}
    for name, port in (
        ("allow-webhook-from-apiserver", 9443),
        ("allow-history-server-from-apiserver", 18080),
        ("allow-operator-webhook", 10250),
    ):
        (rule,) = pols[name]["spec"]["ingress"]
        assert {b["ipBlock"]["cidr"] for b in rule["from"]} == {str(inv.network.subnet), str(inv.cluster.pod_cidr)}
        assert [p["port"] for p in rule["ports"]] == [port]
