"""Server-side dry-run (strict field validation) of everything the later stages apply.

Per inventory and stage: every object the stage renders and every object its writing
steps send when they run (the rendered ones plus the Secrets they generate, the storage
probe claims and pods and the Spark verification application; tests/apiserver/platform.py
``stage_runs``), and every chart release (``helm template`` of the pinned archive with the
stage's values, hooks included). The flights pipeline's SparkApplication too.
"""

from __future__ import annotations

import copy
import inspect
import json
import re

import pytest

from datacloud import spark as flights_spark
from datacloud.kube import object_id
from datacloud.render import Rendered
from datacloud.stages import jupyter, stage_module
from tests.apiserver.platform import INVENTORIES, WRITING_STEPS, apply, inventory, release_key, stage_renders, stage_runs


def stage_objects(inv_name: str, stage: str) -> list[dict]:
    """What the stage sends at run time (each object as last sent), then what it renders and does not send."""
    sent = stage_runs(inv_name)[stage].last_objects() if stage in WRITING_STEPS else []
    seen = {object_id(o) for o in sent}
    rendered = stage_renders(inv_name).get(stage, Rendered()).all_objects()
    return sent + [o for o in rendered if object_id(o) not in seen]


STAGE_CASES = [
    (inv, stage)
    for inv in INVENTORIES
    for stage in dict.fromkeys([*stage_renders(inv), *WRITING_STEPS])
    if stage_objects(inv, stage)
]
RELEASE_CASES = [(inv, rel.name) for inv in INVENTORIES for r in stage_renders(inv).values() for rel in r.releases]


def _applied(stdout: str) -> int:
    return sum(1 for line in stdout.splitlines() if line.endswith("(server dry run)"))


@pytest.mark.parametrize(("inv_name", "stage"), STAGE_CASES, ids=[f"{i}-{s}" for i, s in STAGE_CASES])
def test_stage_objects_pass_server_side_dry_run(apiserver, crds, namespaces, inv_name, stage):
    objects = stage_objects(inv_name, stage)
    res = apply(apiserver, objects)
    assert res.returncode == 0, f"the API server rejected {stage} objects for {inv_name}:\n{res.stderr}"
    assert _applied(res.stdout) == len(objects), res.stdout


def test_the_run_sends_what_only_exists_at_run_time():
    """The capture works: the generated Secrets, the probes and the verification application are there."""
    extra = {}
    for stage in WRITING_STEPS:
        rendered = {object_id(o) for o in stage_renders("reference").get(stage, Rendered()).all_objects()}
        extra[stage] = sorted(o["kind"] for o in stage_runs("reference")[stage].last_objects() if object_id(o) not in rendered)
    assert extra == {
        "network": [],
        "storage": ["PersistentVolumeClaim", "PersistentVolumeClaim", "Pod", "Pod"],  # RWO and RWX probes
        "mongo": ["Secret"] * 5,  # keyFile, system users, admin, app, monitor
        # Connect token, submitter token, the pipelines' MongoDB URI, the verification run
        "spark": ["Secret", "Secret", "Secret", "SparkApplication"],
        "jupyter": ["Secret", "Secret", "Secret"],  # the notebooks' Connect token and MongoDB URI, the hub admin
        "monitoring": ["Secret", "Secret"],  # Grafana's admin, the exporters' URIs
    }


@pytest.mark.parametrize(("inv_name", "stage"), [(inv, stage) for inv in INVENTORIES for stage in WRITING_STEPS], ids=lambda v: v)
def test_the_steps_apply_every_rendered_object(inv_name, stage):
    """What ./dev render shows is what the run applies."""
    rendered = {object_id(o) for o in stage_renders(inv_name).get(stage, Rendered()).all_objects()}
    not_sent = sorted(rendered - {object_id(o) for o in stage_runs(inv_name)[stage].objects})
    assert not_sent == [], f"{stage} renders objects its steps never apply"


@pytest.mark.parametrize("inv_name", list(INVENTORIES))
def test_the_steps_install_the_rendered_releases(inv_name):
    """Every rendered release, nothing else; a release a later step upgrades again is listed in ``_INSTALLED_AGAIN``."""
    for stage in WRITING_STEPS:
        rendered = stage_renders(inv_name).get(stage, Rendered()).releases
        again = _INSTALLED_AGAIN.get(stage, lambda inv: [])(inventory(inv_name))
        assert {(r.name, r.namespace) for r in again} <= {(r.name, r.namespace) for r in rendered}, stage
        installed = stage_runs(inv_name)[stage].releases
        assert sorted(map(release_key, installed)) == sorted(map(release_key, [*rendered, *again])), stage


# Stage -> the releases its steps install a second time (a rendered release with other values):
# jupyter | admin opens sign-up once the admin's account exists (apply installs it closed).
_INSTALLED_AGAIN = {"jupyter": lambda inv: [jupyter.hub_release(inv, signup=True)]}


_WRITES = re.compile(r"\b(?:kube\.apply|apply_or_plan|helm_upgrade)\(")


def test_every_step_that_writes_is_driven():
    """WRITING_STEPS lists every step of the later stages whose code applies objects or installs charts."""
    writing = {
        (stage, step.name)
        for stage in (*WRITING_STEPS, "verify")
        for step in stage_module(stage).STEPS
        if _WRITES.search(inspect.getsource(step.run))
    }
    assert writing == {(stage, name) for stage, names in WRITING_STEPS.items() for name in names}


@pytest.mark.parametrize(("inv_name", "release"), RELEASE_CASES, ids=[f"{i}-{r}" for i, r in RELEASE_CASES])
def test_chart_release_passes_server_side_dry_run(apiserver, crds, namespaces, chart_renders, inv_name, release):
    render = chart_renders[(inv_name, release)]
    assert render.objects or render.crds, f"helm template of {release} rendered nothing"
    missing = {c["metadata"]["name"] for c in render.crds} - set(crds)
    assert not missing, f"CRDs of {release} not installed: {sorted(missing)}"
    if not render.objects:  # a CRD-only chart (psmdb-operator-crds): its CRDs are installed above
        return
    res = apply(apiserver, render.objects)
    assert res.returncode == 0, f"the API server rejected objects of release {release} for {inv_name}:\n{res.stderr}"
    assert _applied(res.stdout) == len(render.objects), res.stdout


def test_flights_spark_application_passes_server_side_dry_run(apiserver, crds, namespaces):
    """The SparkApplication the flights DAG submits per run (its job ConfigMap is built by the
    Kubernetes client's typed V1ConfigMap, which cannot carry a misspelt field, so not here)."""
    name = flights_spark.application_name("etl_flights_daily", "scheduled__2013-01-01T00:00:00+00:00", 1, "2013-01-01")
    app = flights_spark.render_application(name=name, day="2013-01-01", database="datacloud")
    res = apply(apiserver, [app])
    assert res.returncode == 0, res.stderr
    assert _applied(res.stdout) == 1, res.stdout


def _psmdb(inv_name: str = "reference") -> dict:
    return next(o for o in stage_renders(inv_name)["mongo"].all_objects() if o["kind"] == "PerconaServerMongoDB")


def test_the_server_rejects_the_psmdb_object_without_images(apiserver, crds, namespaces):
    """The object as it was before this check: no spec.pmm.image / spec.backup.image (features off)."""
    bad = copy.deepcopy(_psmdb())
    del bad["spec"]["pmm"]["image"], bad["spec"]["backup"]["image"]
    res = apply(apiserver, [bad])
    assert res.returncode != 0, "the server accepted a PerconaServerMongoDB without pmm/backup images"
    assert "spec.pmm.image: Required value" in res.stderr and "spec.backup.image: Required value" in res.stderr, res.stderr


def test_strict_field_validation_rejects_unknown_fields(apiserver, crds, namespaces):
    ceph = next(o for o in stage_renders("reference")["storage"].all_objects() if o["kind"] == "CephCluster")
    bad = copy.deepcopy(ceph)
    bad["spec"]["storage"]["useAllDevice"] = False
    res = apply(apiserver, [bad])
    assert res.returncode != 0 and ".spec.storage.useAllDevice: field not declared in schema" in res.stderr, res.stderr
    (deployment, *_) = [o for o in stage_renders("reference")["monitoring"].all_objects() if o["kind"] == "Deployment"]
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    res = apply(apiserver, [bad])
    assert res.returncode != 0 and "imagePullPolice" in res.stderr, res.stderr


WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


def pod_of(obj: dict) -> dict:
    """The Pod a workload's controller would create, for the admission the workload object skips
    (PodSecurity enforce, ServiceAccount, Priority: a workload only draws warnings)."""
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    template = spec["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{obj['metadata']['name'][:40]}-pod-probe",
            "namespace": obj["metadata"]["namespace"],
            "labels": (template.get("metadata") or {}).get("labels") or {},
        },
        "spec": template["spec"],
    }


@pytest.mark.parametrize("inv_name", list(INVENTORIES))
def test_pods_of_every_workload_pass_pod_admission(apiserver, crds, namespaces, rbac, chart_renders, inv_name):
    workloads = [o for inv, stage in STAGE_CASES if inv == inv_name for o in stage_objects(inv, stage) if o["kind"] in WORKLOADS]
    workloads += [o for (i, _rel), r in chart_renders.items() if i == inv_name for o in r.objects if o["kind"] in WORKLOADS]
    assert len(workloads) > 10
    for ns in {w["metadata"]["namespace"] for w in workloads}:
        apiserver.wait_for_service_account(ns)
    pods = [pod_of(w) for w in workloads]
    res = apiserver.kubectl(
        "create", "--dry-run=server", "-o", "name", "-f", "-", stdin="\n---\n".join(json.dumps(p) for p in pods), check=False
    )
    assert res.returncode == 0, f"pods of {inv_name}'s workloads the server would refuse:\n{res.stderr}"
    assert len(res.stdout.split()) == len(pods), res.stdout


def test_the_connect_server_pod_passes_pod_admission(apiserver, crds, namespaces, rbac):
    """The server pod the operator builds from the SparkConnect's template (its container, the
    token from the Secret, the executor template's ConfigMap): PodSecurity baseline, the
    ServiceAccount (spark-connect) exist; the pod's identity is not the one the policy restricts."""
    (conn,) = [o for o in stage_renders("reference")["spark"].all_objects() if o["kind"] == "SparkConnect"]
    template = copy.deepcopy(conn["spec"]["server"]["template"])
    container = template["spec"]["containers"][0]
    container.update(
        command=["bash", "-c"], args=["${SPARK_HOME}/sbin/start-connect-server.sh --master k8s://https://10.96.0.1:443"]
    )
    container["env"].append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    container["volumeMounts"] = [
        {"name": "spark-conf", "mountPath": "/tmp/spark/executor-pod-template.yaml", "subPath": "executor-pod-template.yaml"}
    ]
    template["spec"]["volumes"] = [{"name": "spark-conf", "configMap": {"name": f"{conn['metadata']['name']}-conf"}}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{conn['metadata']['name']}-server",
            "namespace": conn["metadata"]["namespace"],
            **template["metadata"],
        },
        "spec": template["spec"],
    }
    apiserver.wait_for_service_account("spark-connect", "spark-connect")
    res = apiserver.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", stdin=json.dumps(pod), check=False)
    assert res.returncode == 0, res.stderr
