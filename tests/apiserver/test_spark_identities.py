"""Notebooks hold no Kubernetes credential; Airflow submits Spark with a namespaced token (real API server).

* A notebook pod's identity (``jupyter/spark-notebook``) can create no pod at all, so no pod
  labelled as the hub can become an endpoint of the hub's Service; it creates no Service
  (``externalIPs``), reads no Secret and lists no pod; and its token is never mounted.
* The Connect server's identity creates executor pods in ``spark-connect`` only.
* The spark stage's ``airflow-submitter`` token, issued for real by the token controller into
  the Secret the stage creates, in the kubeconfig the stage builds: it creates a
  SparkApplication in ``spark-jobs`` and nothing in other namespaces, and reads no Secret.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from datacloud import spark as flights_spark
from datacloud.stages import jupyter, spark
from tests.apiserver.platform import apply, stage_renders
from tests.apiserver.test_connect_admission import executor_pod
from tests.helpers.apiserver import ApiServer

NOTEBOOK = f"system:serviceaccount:jupyter:{jupyter.NOTEBOOK_SA}"
CONNECT = f"system:serviceaccount:spark-connect:{spark.CONNECT_SA}"
FORBIDDEN = "is forbidden"


def _create(server: ApiServer, obj: dict[str, Any], **kw: Any):
    return server.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(obj), check=False, **kw)


def hub_selector(chart_renders) -> dict[str, str]:
    render = chart_renders[("reference", jupyter.RELEASE)]
    (svc,) = [o for o in render.objects if o["kind"] == "Service" and o["metadata"]["name"] == "hub"]
    return svc["spec"]["selector"]


def test_a_notebook_cannot_create_a_pod_that_poses_as_the_hub(apiserver, rbac, chart_renders):
    labels = hub_selector(chart_renders)
    assert labels.get("component") == "hub", labels
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "not-the-hub", "namespace": "jupyter", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.37.0", "command": ["sleep", "1"]}]},
    }
    res = _create(apiserver, pod, as_=NOTEBOOK)
    assert res.returncode != 0 and FORBIDDEN in res.stderr and 'cannot create resource "pods"' in res.stderr, res.stderr
    assert _create(apiserver, pod).returncode == 0  # the same pod is valid: only the identity is refused


def test_a_notebook_cannot_create_services_read_secrets_or_list_pods(apiserver, rbac):
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "intercept", "namespace": "jupyter"},
        "spec": {"ports": [{"port": 443}], "externalIPs": ["192.168.1.1"]},
    }
    res = _create(apiserver, svc, as_=NOTEBOOK)
    assert res.returncode != 0 and FORBIDDEN in res.stderr, res.stderr
    for args in (("get", "secrets"), ("get", "pods"), ("delete", "pods", "--all", "--dry-run=server")):
        res = apiserver.kubectl(*args, "--namespace", "jupyter", as_=NOTEBOOK, check=False)
        assert res.returncode != 0 and FORBIDDEN in res.stderr, (args, res.stderr)


def test_notebook_pods_get_no_token(apiserver, rbac):
    """The ServiceAccount itself says automountServiceAccountToken: false, so the API server's
    ServiceAccount admission adds no token volume, even to a pod that does not say so."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "jupyter-alice", "namespace": "jupyter", "labels": dict(jupyter.NOTEBOOK_LABELS)},
        "spec": {
            "serviceAccountName": jupyter.NOTEBOOK_SA,
            "containers": [{"name": "notebook", "image": "busybox:1.37.0", "command": ["sleep", "1"]}],
        },
    }
    res = _create(apiserver, pod)
    assert res.returncode == 0, res.stderr
    admitted = json.loads(res.stdout)
    projected = [v for v in admitted["spec"].get("volumes") or [] if "projected" in v]
    assert projected == [], projected
    # the same pod as another identity of the namespace would get one: the check can fail
    other = {**pod, "spec": {**pod["spec"], "serviceAccountName": "default"}}
    res = _create(apiserver, other)
    assert res.returncode == 0, res.stderr
    assert [v for v in json.loads(res.stdout)["spec"].get("volumes") or [] if "projected" in v]


def test_the_connect_server_creates_executors_in_its_namespace_only(apiserver, rbac):
    pod = executor_pod()
    for ns in ("spark-jobs", "jupyter", "default"):
        res = _create(apiserver, {**pod, "metadata": {**pod["metadata"], "namespace": ns}}, as_=CONNECT)
        assert res.returncode != 0 and FORBIDDEN in res.stderr, (ns, res.stderr)


@pytest.fixture(scope="module")
def submitter_kubeconfig(apiserver: ApiServer, rbac, tmp_path_factory) -> Path:
    """The token Secret applied as the stage applies it, filled in by the real token controller;
    the kubeconfig the stage stores in datacloud_kubernetes_spark, from it."""
    secret = spark.submitter_token_secret()
    apply(apiserver, [secret], dry_run=False, check=True)
    path = f"/api/v1/namespaces/spark-jobs/secrets/{spark.SUBMITTER_TOKEN_SECRET}"
    found: dict[str, Any] = {}

    def issued() -> bool:
        found.update(apiserver.get_json(path).get("data") or {})
        return bool(found.get("token") and found.get("ca.crt"))

    apiserver.wait_for(issued, "the token controller to fill in the submitter's token", 60, interval_s=0.5)
    token = base64.b64decode(found["token"]).decode()
    ca = base64.b64decode(found["ca.crt"]).decode()
    kubeconfig = tmp_path_factory.mktemp("submitter") / "kubeconfig"
    kubeconfig.write_text(spark.submitter_kubeconfig(apiserver.url, ca, token, "test"))
    return kubeconfig


def _flights_app(namespace: str) -> dict[str, Any]:
    name = flights_spark.application_name("etl_flights_daily", "scheduled__2013-01-01T00:00:00+00:00", 1, "2013-01-01")
    return flights_spark.render_application(name=name, day="2013-01-01", database="datacloud", namespace=namespace)


def test_the_submitter_token_is_the_service_accounts(apiserver, submitter_kubeconfig):
    res = apiserver.kubectl("auth", "whoami", "-o", "json", kubeconfig=submitter_kubeconfig)
    assert json.loads(res.stdout)["status"]["userInfo"]["username"] == "system:serviceaccount:spark-jobs:airflow-submitter"


def test_the_submitter_creates_a_spark_application_in_spark_jobs(apiserver, crds, namespaces, submitter_kubeconfig):
    res = _create(apiserver, _flights_app("spark-jobs"), kubeconfig=submitter_kubeconfig)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["kind"] == "SparkApplication"


@pytest.mark.parametrize("namespace", ["default", "spark-connect", "jupyter", "mongo"])
def test_the_submitter_creates_nothing_elsewhere(apiserver, crds, namespaces, submitter_kubeconfig, namespace):
    res = _create(apiserver, _flights_app(namespace), kubeconfig=submitter_kubeconfig)
    assert res.returncode != 0 and FORBIDDEN in res.stderr, res.stderr


def test_the_submitter_reads_no_secret_and_runs_no_pod(apiserver, namespaces, submitter_kubeconfig):
    for ns in ("spark-jobs", "mongo", "spark-connect"):
        res = apiserver.kubectl("get", "secrets", "--namespace", ns, kubeconfig=submitter_kubeconfig, check=False)
        assert res.returncode != 0 and FORBIDDEN in res.stderr, (ns, res.stderr)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "spark-jobs"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.37.0"}]},
    }
    res = _create(apiserver, pod, kubeconfig=submitter_kubeconfig)
    assert res.returncode != 0 and FORBIDDEN in res.stderr, res.stderr
    # the stage's render holds the Role that allows what the tests above saw
    (role,) = [
        o
        for o in stage_renders("reference")["spark"].all_objects()
        if o["kind"] == "Role" and o["metadata"]["name"] == spark.SUBMITTER_SA
    ]
    assert role["metadata"]["namespace"] == "spark-jobs"
