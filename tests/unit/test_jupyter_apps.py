"""JupyterHub wiring: the notebook helper (Spark Connect), a notebook identity without
Kubernetes access, NetworkPolicies to the Connect server, the images and the example notebook."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from datacloud.config import REPO_ROOT
from datacloud.images import ImageVersionError, check_versions, dockerfile_args
from datacloud.stages import jupyter, spark
from tests.unit.apps_fixtures import all_objects, by_kind, inventories, rendered

IMAGES = REPO_ROOT / "manifests" / "images"


def _load(path: Path, name: str, **globals_):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(globals_)
    spec.loader.exec_module(module)
    return module


# --- the notebook helper -------------------------------------------------------


@pytest.fixture(scope="module")
def helper():
    return _load(IMAGES / "jupyter" / "datacloud_spark.py", "datacloud_spark_under_test")


def _pod_env() -> dict[str, str]:
    """The environment a user pod gets: the chart's extraEnv, Secrets resolved as the kubelet would."""
    values = rendered("reference")["jupyter"].releases[0].values
    env = {k: v for k, v in values["singleuser"]["extraEnv"].items() if isinstance(v, str)}
    refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in values["singleuser"]["extraEnv"].items() if not isinstance(v, str)}
    assert refs == {
        "DATACLOUD_SPARK_CONNECT_TOKEN": {"name": jupyter.CONNECT_TOKEN_SECRET, "key": "token", "optional": True},
        "MONGODB_URI": {"name": jupyter.MONGO_SECRET, "key": "uri", "optional": True},
    }
    env["DATACLOUD_SPARK_CONNECT_TOKEN"] = "token-from-the-secret"
    env["MONGODB_URI"] = "mongodb://reader@mongos.mongo.svc:27017/datacloud"
    env["JUPYTERHUB_USER"] = "alice@example.org"  # KubeSpawner sets it
    return env


def test_helper_connects_to_the_platforms_connect_server(helper) -> None:
    settings = helper.connect_settings("t", _pod_env())
    assert settings["url"] == f"{spark.connect_url()}/;user_id=alice-example.org"
    assert settings["token"] == "token-from-the-secret"
    assert "token" not in settings["url"]  # never in the URL: pyspark would then insist on TLS
    conf = settings["conf"]
    assert conf["spark.app.name"] == "t"
    assert conf["spark.mongodb.read.database"] == "datacloud"
    assert not [k for k in conf if k.startswith(("spark.kubernetes.", "spark.master", "spark.driver."))]


def test_helper_channel_sends_the_token_as_a_bearer_header_on_plain_grpc(helper) -> None:
    builder = helper.channel_builder(f"{spark.connect_url()}/;user_id=alice", "s3cret")
    assert builder.secure is False  # the server has no TLS: pyspark's own token handling would use TLS
    assert ("authorization", "Bearer s3cret") in list(builder.metadata())
    assert builder.userId == "alice"


def test_helper_refuses_outside_a_notebook_pod(helper) -> None:
    with pytest.raises(helper.NotInNotebookPod, match="DATACLOUD_SPARK_CONNECT_TOKEN not set"):
        helper.connect_settings("t", {"SPARK_CONNECT_URL": spark.connect_url()})
    with pytest.raises(helper.NotInNotebookPod, match="without parameters"):
        helper.connect_settings("t", {"SPARK_CONNECT_URL": "sc://h:1/;token=x", "DATACLOUD_SPARK_CONNECT_TOKEN": "t"})


def test_notebooks_reach_the_connect_server_and_nothing_of_spark_else() -> None:
    objs = all_objects("reference")
    (pol,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == "allow-notebooks-to-spark-connect"]
    assert pol["spec"]["podSelector"] == {"matchLabels": jupyter.NOTEBOOK_LABELS}
    (rule,) = pol["spec"]["egress"]
    (peer,) = rule["to"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "spark-connect"}}
    assert peer["podSelector"] == {"matchLabels": spark.CONNECT_SERVER_LABELS}
    assert rule["ports"] == [{"protocol": "TCP", "port": spark.CONNECT_PORT}]
    netpol = rendered("reference")["jupyter"].releases[0].values["singleuser"]["networkPolicy"]
    assert "ingress" not in netpol  # no executor connects back any more
    assert netpol["egressAllowRules"]["privateIPs"] is False
    assert not [r for r in netpol["egress"] if "ipBlock" in r["to"][0]]  # no API server: notebooks hold no credential
    # the Connect server admits the notebook pods (same labels) on its gRPC port
    (allow,) = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == "allow-connect-clients"]
    (ingress,) = allow["spec"]["ingress"]
    (nb,) = [f for f in ingress["from"] if "namespaceSelector" in f]
    assert nb["podSelector"]["matchLabels"] == jupyter.NOTEBOOK_LABELS
    assert nb["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "jupyter"}


def test_notebook_identity_has_no_kubernetes_access() -> None:
    objs = all_objects("reference")
    jupyter_objs = rendered("reference")["jupyter"].all_objects()
    (sa,) = by_kind(jupyter_objs, "ServiceAccount")
    assert sa["metadata"]["name"] == jupyter.NOTEBOOK_SA
    assert sa["automountServiceAccountToken"] is False
    assert not by_kind(jupyter_objs, "Role") and not by_kind(jupyter_objs, "RoleBinding")
    bound = [s for b in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding") for s in b.get("subjects", [])]
    assert not [s for s in bound if s.get("name") == jupyter.NOTEBOOK_SA]
    assert not [o for o in jupyter_objs if o["kind"].startswith("ValidatingAdmissionPolicy")]
    values = rendered("reference")["jupyter"].releases[0].values
    assert values["singleuser"]["serviceAccountName"] == jupyter.NOTEBOOK_SA
    assert values["hub"]["config"]["KubeSpawner"]["automount_service_account_token"] is False
    assert "extraConfig" not in values["hub"]  # no spawner hooks: no per-user driver Service
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
