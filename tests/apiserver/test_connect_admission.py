"""The Spark Connect executors' ValidatingAdmissionPolicy (manifests/spark/connect-admission.yaml.j2), evaluated by the real server.

Whoever holds a Connect session runs code in the server, so the server's identity is
what a notebook user can reach. The policy and its binding are applied for real;
pods are created with ``--dry-run=server`` as the server's identity
(``--as=system:serviceaccount:spark-connect:spark-connect``), so RBAC, PodSecurity (the
namespace enforces baseline) and the policy all decide. A pod like the executors Spark
creates from the Connect server is admitted; each pod the policy claims to deny (one
claim broken at a time: a Secret mounted or read into the environment in every way a
pod spec allows, a label that would make it an endpoint of the server's Service or of
the hub's, another image, identity or volume kind...) is denied with that claim's
message. Claims PodSecurity baseline also covers (privileged, host namespaces) are
checked twice: as deployed (denied, by whichever comes first) and with the
namespace's PodSecurity relaxed for the test, where the policy alone must deny.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.apiserver.platform import apply, stage_renders
from tests.helpers.apiserver import ApiServer

NS = "spark-connect"
SERVER = f"system:serviceaccount:{NS}:spark-connect"
INV = "reference"


def _spark_objects(kind: str) -> list[dict[str, Any]]:
    return [o for o in stage_renders(INV)["spark"].all_objects() if o["kind"] == kind]


def spark_image() -> str:
    (policy,) = _spark_objects("ValidatingAdmissionPolicy")
    image_rule = next(v for v in policy["spec"]["validations"] if "c.image ==" in v["expression"])
    return image_rule["expression"].split("'")[1]


def executor_pod() -> dict[str, Any]:
    """An executor pod as Spark 4 builds it in the Connect server (client mode, the operator's labels)."""
    name = "datacloud-connect-exec-1"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "spark-app-selector": "spark-0a1b2c3d4e5f",
                "spark-app-name": "spark-connect-server",
                "spark-exec-id": "1",
                "spark-exec-resourceprofile-id": "0",
                "spark-role": "executor",
                "sparkoperator.k8s.io/launched-by-spark-operator": "true",
                "sparkoperator.k8s.io/connect-name": "datacloud-connect",
                "app.kubernetes.io/part-of": "datacloud",
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": "datacloud-connect-server",
                    "uid": "5d0c8e9e-2c0f-4d0b-9f5e-3a1c7b2d9e10",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "hostname": name,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "spark-kubernetes-executor",
                    "image": spark_image(),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["executor"],
                    "env": [
                        {
                            "name": "SPARK_DRIVER_URL",
                            "value": "spark://CoarseGrainedScheduler@10.244.1.17:7078",
                        },
                        {"name": "SPARK_EXECUTOR_ID", "value": "1"},
                        {
                            "name": "SPARK_EXECUTOR_POD_IP",
                            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
                        },
                        {"name": "SPARK_LOCAL_DIRS", "value": "/var/data/spark-local"},
                    ],
                    "ports": [{"name": "blockmanager", "containerPort": 7079, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "1", "memory": "1024Mi"}, "limits": {"memory": "1024Mi"}},
                    "volumeMounts": [
                        {"name": "spark-local-dir-1", "mountPath": "/var/data/spark-local"},
                        {"name": "spark-conf-volume-exec", "mountPath": "/opt/spark/conf"},
                    ],
                }
            ],
            "volumes": [
                {"name": "spark-local-dir-1", "emptyDir": {}},
                {"name": "spark-conf-volume-exec", "configMap": {"name": "spark-exec-3f2a9c-conf-map", "defaultMode": 420}},
                # what the ServiceAccount admission adds for the default ServiceAccount's token
                {
                    "name": "kube-api-access-x7k2p",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                        ]
                    },
                },
            ],
        },
    }


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def _set(path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        path(pod)[key] = value

    return change


def _no_spark_role(pod: dict[str, Any]) -> None:
    del pod["metadata"]["labels"]["spark-role"]


def _init_container(pod: dict[str, Any]) -> None:
    pod["spec"]["initContainers"] = [{"name": "fetch", "image": "busybox:1.37.0", "command": ["true"]}]


def _claim(pod: dict[str, Any]) -> None:  # a user's home, if it were here
    pod["spec"]["volumes"].append({"name": "home", "persistentVolumeClaim": {"claimName": "claim-bob"}})


def _volume(volume: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        pod["spec"]["volumes"].append({"name": "extra", **volume})

    return change


def _env(entry: dict[str, Any], init: bool = False) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        if init:
            pod["spec"]["initContainers"] = [{"name": "init", "image": spark_image(), "command": ["true"], **entry}]
        else:
            _container(pod).update({k: [*_container(pod).get(k, []), *v] for k, v in entry.items()})

    return change


def _label(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    return _set(lambda p: p["metadata"]["labels"], key, value)


SECRET_REF = {"secretKeyRef": {"name": "spark-connect-token", "key": "token"}}


# (case, change to the executor pod, the claim's message, PodSecurity baseline also denies it)
DENIED: list[tuple[str, Callable[[dict[str, Any]], None], str, bool]] = [
    ("no-spark-role-label", _no_spark_role, "may only create Spark executor pods", False),
    (
        "driver-role",
        _set(lambda p: p["metadata"]["labels"], "spark-role", "driver"),
        "may only create Spark executor pods",
        False,
    ),
    ("other-image", _set(_container, "image", "busybox:1.37.0"), "executor pods must use the platform's Spark image", False),
    ("init-container-image", _init_container, "executor init containers must use the platform's Spark image", False),
    (
        "server-serviceaccount",
        _set(lambda p: p["spec"], "serviceAccountName", "spark-connect"),
        "run as the default ServiceAccount",
        False,
    ),
    ("claim-volume", _claim, "may only mount emptyDir, configMap and projected", False),
    (
        "secret-volume",
        _volume({"secret": {"secretName": "spark-connect-token"}}),
        "may only mount emptyDir, configMap and projected",
        False,
    ),
    (
        "projected-secret",
        _volume({"projected": {"sources": [{"secret": {"name": "spark-connect-token"}}]}}),
        "may only mount emptyDir, configMap and projected",
        False,
    ),
    ("host-path", _volume({"hostPath": {"path": "/etc/kubernetes"}}), "may only mount emptyDir, configMap and projected", True),
    ("env-secret-key-ref", _env({"env": [{"name": "T", "valueFrom": SECRET_REF}]}), "may not read Secrets", False),
    ("env-from-secret", _env({"envFrom": [{"secretRef": {"name": "spark-connect-token"}}]}), "may not read Secrets", False),
    (
        "init-env-secret",
        _env({"env": [{"name": "T", "valueFrom": SECRET_REF}]}, init=True),
        "may not read Secrets",
        False,
    ),
    ("server-label", _label("datacloud/connect-role", "server"), "carry only Spark's and the operator's labels", False),
    ("hub-label", _label("component", "hub"), "carry only Spark's and the operator's labels", False),
    ("connect-server-role", _label("spark-role", "connect-server"), "may only create Spark executor pods", False),
    (
        "privilege-escalation",
        _set(_container, "securityContext", {"allowPrivilegeEscalation": True}),
        "may not be privileged",
        False,
    ),
    ("privileged", _set(_container, "securityContext", {"privileged": True}), "may not be privileged", True),
    ("host-network", _set(lambda p: p["spec"], "hostNetwork", True), "may not use the host's namespaces", True),
    ("host-pid", _set(lambda p: p["spec"], "hostPID", True), "may not use the host's namespaces", True),
    ("host-ipc", _set(lambda p: p["spec"], "hostIPC", True), "may not use the host's namespaces", True),
]


def create_pod(server: ApiServer, pod: dict[str, Any], as_: str | None = SERVER):
    return server.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", stdin=json.dumps(pod), as_=as_, check=False)


@pytest.fixture(scope="module")
def policy(apiserver: ApiServer, namespaces, rbac) -> dict[str, Any]:
    """Policy and binding applied for real; returns the policy as the server holds it once it denies."""
    objs = _spark_objects("ValidatingAdmissionPolicy") + _spark_objects("ValidatingAdmissionPolicyBinding")
    assert len(objs) == 2
    apply(apiserver, objs, dry_run=False, check=True)
    apiserver.wait_for_service_account(NS, "default")
    probe = executor_pod()
    _no_spark_role(probe)
    deadline = time.monotonic() + 60
    while "may only create Spark executor pods" not in create_pod(apiserver, probe).stderr:
        assert time.monotonic() < deadline, "the policy did not start denying within 60 s"
        time.sleep(0.5)
    path = f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{objs[0]['metadata']['name']}"

    def type_checked() -> bool:  # the controller manager's validatingadmissionpolicy-status controller
        obj = apiserver.get_json(path)
        return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]

    apiserver.wait_for(type_checked, "the policy's type checking status", 60)
    return apiserver.get_json(path)


@pytest.fixture
def psa_relaxed(apiserver: ApiServer) -> Iterator[None]:
    """The spark-connect namespace with PodSecurity enforce=privileged for one test, then as rendered again."""
    (ns,) = [o for o in stage_renders(INV)["spark"].all_objects() if o["kind"] == "Namespace" and o["metadata"]["name"] == NS]
    apiserver.kubectl("label", "namespace", NS, "--overwrite", "pod-security.kubernetes.io/enforce=privileged")
    try:
        yield
    finally:
        apply(apiserver, [ns], dry_run=False, check=True)
        labels = apiserver.get_json(f"/api/v1/namespaces/{NS}")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]


def test_policy_compiles_without_type_warnings(policy):
    status = policy.get("status") or {}
    assert status["observedGeneration"] == policy["metadata"]["generation"], status
    assert "typeChecking" in status, status
    assert (status["typeChecking"] or {}).get("expressionWarnings") in (None, []), status["typeChecking"]


def test_a_spark_executor_pod_is_admitted(apiserver, policy):
    res = create_pod(apiserver, executor_pod())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "pod/datacloud-connect-exec-1"


VAP_DENIED = "ValidatingAdmissionPolicy 'datacloud-connect-executors' with binding 'datacloud-connect-executors' denied request"
PSA_DENIED = 'violates PodSecurity "baseline:latest"'


@pytest.mark.parametrize(("case", "change", "message", "psa"), DENIED, ids=[d[0] for d in DENIED])
def test_the_policy_denies_what_it_claims(apiserver, policy, case, change, message, psa):
    """As deployed: the policy's message, or (only where baseline covers the claim) PodSecurity's."""
    pod = executor_pod()
    change(pod)
    res = create_pod(apiserver, pod)
    assert res.returncode != 0, f"{case}: admitted"
    by_policy = VAP_DENIED in res.stderr and message in res.stderr
    assert by_policy or (psa and PSA_DENIED in res.stderr), res.stderr


@pytest.mark.parametrize(("case", "change", "message"), [d[:3] for d in DENIED], ids=[d[0] for d in DENIED])
def test_the_policy_alone_denies_with_its_message(apiserver, policy, psa_relaxed, case, change, message):
    pod = executor_pod()
    change(pod)
    res = create_pod(apiserver, pod)
    assert res.returncode != 0, f"{case}: admitted with PodSecurity relaxed"
    assert VAP_DENIED in res.stderr and message in res.stderr, res.stderr


def test_pods_of_others_are_not_the_policys_business(apiserver, policy):
    """The matchCondition: the same pod from another identity is left to RBAC and PodSecurity."""
    pod = executor_pod()
    _set(_container, "image", "busybox:1.37.0")(pod)
    assert create_pod(apiserver, pod).returncode != 0
    res = create_pod(apiserver, pod, as_=None)  # the admin
    assert res.returncode == 0, res.stderr
