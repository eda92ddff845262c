"""JupyterHub wiring: spawner hooks (with a recording API double), the notebook helper,
NetworkPolicies for exactly driver<->executor traffic, the images and the example notebook."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from datacloud.config import REPO_ROOT
from datacloud.images import ImageVersionError, check_versions, dockerfile_args
from datacloud.stages import jupyter, spark
from tests.unit.apps_fixtures import all_objects, by_kind, inventories, rendered, selects

IMAGES = REPO_ROOT / "manifests" / "images"


def _load(path: Path, name: str, **globals_):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(globals_)
    spec.loader.exec_module(module)
    return module


class RecordingCoreV1Double:
    """Test double of kubernetes_asyncio's CoreV1Api: records calls, answers 409 when told to."""

    def __init__(self, conflict: bool = False) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.conflict = conflict

    async def create_namespaced_service(self, namespace, body):
        self.calls.append(("create", {"namespace": namespace, "body": body}))
        if self.conflict:
            raise type("ApiException", (Exception,), {"status": 409})()

    async def replace_namespaced_service(self, name, namespace, body):
        self.calls.append(("replace", {"name": name, "namespace": namespace, "body": body}))


def _spawner(api, pod_name="jupyter-alice") -> SimpleNamespace:
    return SimpleNamespace(pod_name=pod_name, namespace="jupyter", api=api, log=logging.getLogger("spawner-double"))


def _pod_object(labels=None):
    container = SimpleNamespace(env=[{"name": "JUPYTERHUB_USER", "value": "alice"}])
    return SimpleNamespace(
        metadata=SimpleNamespace(labels=labels or {"component": "singleuser-server"}),
        spec=SimpleNamespace(containers=[container]),
    )


@pytest.fixture(scope="module")
def hooks():
    config = SimpleNamespace(KubeSpawner=SimpleNamespace())
    module = _load(jupyter.HOOKS_FILE, "spark_driver_service_under_test", c=config)
    return module, config


def test_hooks_are_registered_and_shipped_in_the_values(hooks) -> None:
    module, config = hooks
    assert config.KubeSpawner.modify_pod_hook is module.modify_pod
    assert config.KubeSpawner.after_pod_created_hook is module.create_driver_service
    values = rendered("reference")["jupyter"].releases[0].values
    code = values["hub"]["extraConfig"]["datacloud-spark"]
    assert code == jupyter.HOOKS_FILE.read_text()
    compile(code, "extraConfig", "exec")


def test_modify_pod_labels_the_pod_and_sets_the_driver_environment(hooks) -> None:
    module, _ = hooks
    pod = module.modify_pod(_spawner(None), _pod_object())
    assert pod.metadata.labels[module.LABEL] == "jupyter-alice-spark"
    env = {e["name"]: e["value"] for e in pod.spec.containers[0].env}
    assert env["SPARK_DRIVER_HOST"] == "jupyter-alice-spark.jupyter.svc"
    assert env["SPARK_DRIVER_PORT"] == str(spark.DRIVER_PORT)
    assert env["SPARK_BLOCK_MANAGER_PORT"] == str(spark.BLOCK_MANAGER_PORT)
    assert env["JUPYTERHUB_USER"] == "alice"  # existing variables kept


def test_after_pod_created_makes_an_owned_headless_service(hooks) -> None:
    module, _ = hooks
    api = RecordingCoreV1Double()
    pod_labels = module.modify_pod(_spawner(api), _pod_object()).metadata.labels
    pod = {"metadata": {"name": "jupyter-alice", "uid": "uid-1", "labels": pod_labels}}
    asyncio.run(module.create_driver_service(_spawner(api), pod))
    ((verb, call),) = api.calls
    svc = call["body"]
    assert verb == "create"
    assert call["namespace"] == "jupyter"
    assert svc["spec"]["clusterIP"] == "None"
    assert selects({"matchLabels": svc["spec"]["selector"]}, pod_labels)
    assert {p["port"] for p in svc["spec"]["ports"]} >= {spark.DRIVER_PORT, spark.BLOCK_MANAGER_PORT}
    assert svc["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "jupyter-alice",
        "uid": "uid-1",
        "blockOwnerDeletion": True,
    }


def test_a_leftover_service_is_replaced_not_fatal(hooks) -> None:
    module, _ = hooks
    api = RecordingCoreV1Double(conflict=True)
    asyncio.run(module.create_driver_service(_spawner(api), {"metadata": {"name": "jupyter-alice", "uid": "u"}}))
    assert [v for v, _ in api.calls] == ["create", "replace"]


def test_long_pod_names_give_valid_service_names(hooks) -> None:
    module, _ = hooks
    long = "jupyter-" + "a" * 60
    name = module.driver_service_name(long)
    assert len(name) <= 63
    assert name.endswith("-spark")
    assert name != module.driver_service_name("jupyter-" + "a" * 59 + "b")


# --- the notebook helper -------------------------------------------------------


@pytest.fixture(scope="module")
def helper():
    return _load(IMAGES / "jupyter" / "datacloud_spark.py", "datacloud_spark_under_test")


def _pod_env(hooks) -> dict[str, str]:
    """The environment a user pod gets: chart extraEnv plus what modify_pod adds."""
    module, _ = hooks
    values = rendered("reference")["jupyter"].releases[0].values
    env = {k: v for k, v in values["singleuser"]["extraEnv"].items() if isinstance(v, str)}
    pod = module.modify_pod(_spawner(None), _pod_object())
    env.update({e["name"]: e["value"] for e in pod.spec.containers[0].env})
    env["MONGODB_URI"] = "mongodb://reader@mongos.mongo.svc:27017/datacloud"  # from the Secret at run time
    return env


def test_helper_conf_from_the_spawned_environment(hooks, helper) -> None:
    inv = inventories()["reference"]
    conf = helper.session_conf("t", _pod_env(hooks))
    assert conf["spark.master"].startswith("k8s://https://kubernetes.default.svc")
    assert conf["spark.submit.deployMode"] == "client"
    assert conf["spark.kubernetes.namespace"] == "jupyter"
    assert conf["spark.kubernetes.container.image"] == spark.image(inv)
    assert conf["spark.driver.host"] == "jupyter-alice-spark.jupyter.svc"
    assert conf["spark.kubernetes.driver.pod.name"] == "jupyter-alice"
    assert conf["spark.dynamicAllocation.maxExecutors"] == str(inv.components.spark.max_executors)
    assert conf["spark.mongodb.read.database"] == "datacloud"
    # the executor labels Spark will set are exactly what the NetworkPolicy selects
    labels = {
        k.removeprefix("spark.kubernetes.executor.label."): v
        for k, v in conf.items()
        if k.startswith("spark.kubernetes.executor.label.")
    }
    (pol,) = [
        p for p in by_kind(all_objects("reference"), "NetworkPolicy") if p["metadata"]["name"] == "notebook-spark-executors"
    ]
    assert selects(pol["spec"]["podSelector"], labels)


def test_helper_refuses_outside_a_notebook_pod(helper) -> None:
    with pytest.raises(helper.NotInNotebookPod, match="SPARK_DRIVER_HOST, SPARK_KUBERNETES_NAMESPACE"):
        helper.session_conf("t", {"SPARK_EXECUTOR_IMAGE": "x:1"})


def test_notebook_network_allows_exactly_driver_executor_traffic() -> None:
    objs = all_objects("reference")
    (pol,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == "notebook-spark-executors"]
    ingress_ports = {p["port"] for rule in pol["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {spark.BLOCK_MANAGER_PORT}
    egress = {
        tuple(sorted(rule["to"][0].get("podSelector", {}).get("matchLabels", {}).items())): {p["port"] for p in rule["ports"]}
        for rule in pol["spec"]["egress"]
    }
    assert egress[tuple(sorted(jupyter.NOTEBOOK_LABELS.items()))] == {spark.DRIVER_PORT, spark.BLOCK_MANAGER_PORT}
    assert egress[tuple(sorted(jupyter.EXECUTOR_LABELS.items()))] == {spark.BLOCK_MANAGER_PORT}
    netpol = rendered("reference")["jupyter"].releases[0].values["singleuser"]["networkPolicy"]
    (ing,) = netpol["ingress"]
    assert ing["from"] == [{"podSelector": {"matchLabels": jupyter.EXECUTOR_LABELS}}]
    assert {p["port"] for p in ing["ports"]} == {spark.DRIVER_PORT, spark.BLOCK_MANAGER_PORT}
    assert netpol["egressAllowRules"]["privateIPs"] is False
    api = [r for r in netpol["egress"] if "ipBlock" in r["to"][0]]
    assert api[0]["to"][0]["ipBlock"]["cidr"] == "192.168.1.1/32"
    assert api[0]["ports"][0]["port"] == 6443


def test_notebook_identity_manages_only_namespaced_executor_resources() -> None:
    objs = all_objects("reference")
    (role,) = [o for o in by_kind(objs, "Role") if o["metadata"]["name"] == "notebook-spark-executors"]
    assert role["metadata"]["namespace"] == "jupyter"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"],
            "verbs": ["create", "get", "list", "watch", "delete", "deletecollection"],
        }
    ]
    values = rendered("reference")["jupyter"].releases[0].values
    assert values["singleuser"]["serviceAccountName"] == jupyter.NOTEBOOK_SA
    assert values["singleuser"]["storage"]["dynamic"]["storageClass"] == "rook-ceph-block"
    assert values["cull"]["enabled"] is True
    assert values["cull"]["timeout"] == 3600


# --- images ------------------------------------------------------------------


def test_images_agree() -> None:
    shared = check_versions()
    assert shared["Python"] == "3.11"
    assert shared["Spark"] == "4.2.0"
    assert shared["Scala"] == "2.13"


def test_image_mismatch_is_refused_naming_the_versions(tmp_path: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(IMAGES, root, ignore=shutil.ignore_patterns("jars"))
    df = root / "jupyter" / "Dockerfile"
    df.write_text(
        df.read_text()
        .replace("ARG PYTHON_VERSION=3.11", "ARG PYTHON_VERSION=3.12")
        .replace("ARG PANDAS_VERSION=3.1.1", "ARG PANDAS_VERSION=2.3.3")
    )
    with pytest.raises(ImageVersionError) as err:
        check_versions(root)
    msg = str(err.value)
    assert "Python 3.11 in the Spark image but 3.12 in the Jupyter image" in msg
    assert "pandas 3.1.1 in the Spark image but 2.3.3 in the Jupyter image" in msg
    assert "Spark 4.2.0" not in msg


def test_images_are_pinned_and_non_root() -> None:
    for name in ("spark", "jupyter"):
        text = (IMAGES / name / "Dockerfile").read_text()
        froms = [ln.split()[1] for ln in text.splitlines() if ln.startswith("FROM ")]
        assert froms
        assert all(":" in f and not f.endswith(":latest") for f in froms), froms
        users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
        assert users[-1] in ("185", "${NB_UID}"), users
    assert "FROM apache/spark:" in (IMAGES / "spark" / "Dockerfile").read_text()
    assert "FROM quay.io/jupyter/pyspark-notebook:" in (IMAGES / "jupyter" / "Dockerfile").read_text()
    inv = inventories()["reference"]
    assert dockerfile_args(IMAGES / "spark" / "Dockerfile")["SPARK_VERSION"] in spark.image(inv)


def test_example_notebook_reads_daily_delay_stats_and_plots() -> None:
    nb = json.loads((REPO_ROOT / "notebooks" / "daily_delay_stats.ipynb").read_text())
    assert nb["nbformat"] == 4
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            ast.parse("".join(cell["source"]))
            assert cell["outputs"] == []
    assert "spark_session(" in code
    assert '"daily_delay_stats"' in code
    assert 'format("mongodb")' in code
    assert ".plot" in code


def test_admission_policy_narrows_what_notebooks_may_create() -> None:
    inv = inventories()["reference"]
    objs = all_objects("reference")
    (vap,) = by_kind(objs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "jupyter"}
    (cond,) = vap["spec"]["matchConditions"]
    assert cond["expression"] == 'request.userInfo.username == "system:serviceaccount:jupyter:spark-notebook"'
    rules = " ".join(v["expression"] for v in vap["spec"]["validations"])
    assert f"c.image == '{spark.image(inv)}'" in rules
    assert "spark-role" in rules
    assert "persistentVolumeClaim" not in rules  # claims are not in the allowed volume kinds
    assert "has(v.emptyDir) || has(v.configMap) || has(v.projected) || has(v.secret)" in rules


def _bootstrap(tmp_path: Path, *passwords: str, rotate: bool = False) -> list[str]:
    """Run bootstrap_admin.py once per password (as the hub would, one exec each) in one interpreter."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "doubles_hub")}
    db = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    specs = [json.dumps({"db_url": db, "username": jupyter.ADMIN_USER, "password": p, "rotate": rotate}) for p in passwords]
    driver = (
        "import io, json, sys\n"
        f"code = compile(open({str(jupyter.BOOTSTRAP_FILE)!r}).read(), 'bootstrap_admin.py', 'exec')\n"
        "for spec in json.loads(sys.argv[1]):\n"
        "    sys.stdin = io.StringIO(spec)\n"
        "    exec(code, {'__name__': '__main__'})\n"
    )
    res = subprocess.run([sys.executable, "-c", driver, json.dumps(specs)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_admin_bootstrap_creates_once_and_detects_a_foreign_password(tmp_path: Path) -> None:
    import sqlite3

    import bcrypt

    words = _bootstrap(tmp_path, "first-secret-value", "first-secret-value", "someone-else")
    assert words == ["created", "exists", "exists-other-password"]
    rows = sqlite3.connect(tmp_path / "hub.sqlite").execute("select username, password, is_authorized from users_info").fetchall()
    assert len(rows) == 1
    name, hashed, authorized = rows[0]
    assert name == jupyter.ADMIN_USER
    assert authorized == 1
    assert bcrypt.checkpw(b"first-secret-value", hashed)


def test_admin_bootstrap_rotation_sets_the_new_password(tmp_path: Path) -> None:
    import sqlite3

    import bcrypt

    assert _bootstrap(tmp_path, "first-secret-value") == ["created"]
    assert _bootstrap(tmp_path, "second-secret-value", "second-secret-value", rotate=True) == ["rotated", "exists"]
    rows = sqlite3.connect(tmp_path / "hub.sqlite").execute("select password, is_authorized from users_info").fetchall()
    assert len(rows) == 1 and rows[0][1] == 1
    assert bcrypt.checkpw(b"second-secret-value", rows[0][0])
