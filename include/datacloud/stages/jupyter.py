"""Stage jupyter: JupyterHub (zero-to-jupyterhub chart) wired to Spark Connect and MongoDB.

``render(inv)`` gives the namespace, the notebook identity (ServiceAccount
``spark-notebook``: no Role, token never mounted), the NetworkPolicies (notebook
pods may reach the platform's Spark Connect server), and the chart release whose
values set: NativeAuthenticator (sign-up closed until the admin step has created the
admin's account, then open with an admin's approval; never the dummy authenticator),
per-user volumes on the block StorageClass, idle culling, the single-user image from
manifests/images/jupyter, and the environment its ``spark_session()`` connects with
(the Connect server's URL; its token from Secret ``jupyter/spark-connect-token``,
which the apply step copies from the spark stage's Secret).

Notebooks create no pods: Spark runs in the Connect server of the spark stage, so
the per-user driver Service, the executor Role and the notebook admission policy of
earlier versions are gone, and the apply step deletes them from a cluster that has them.
"""

from __future__ import annotations

import logging
from typing import Any

from datacloud.config import MANIFESTS_DIR
from datacloud.images import name_and_tag, own_image, pull_policy
from datacloud.inventory import Inventory
from datacloud.render import Release, Rendered, render_template, versions
from datacloud.stages import spark
from datacloud.stages.apps_common import (
    JUPYTER_NS,
    ROTATE_ANNOTATION,
    SPARK_CONNECT_NS,
    netpol_context,
    resources,
    storage_classes,
)

log = logging.getLogger(__name__)

RELEASE = "jupyterhub"
NOTEBOOK_SA = "spark-notebook"
ADMIN_USER = "datacloud-admin"
MONGO_SECRET = "notebook-mongo"  # noqa: S105 - a Secret name; key `uri`: created by the stage from the datacloud_mongo connection
# The Spark Connect token for notebooks (key `token`): a copy of the spark stage's Secret.
CONNECT_TOKEN_SECRET = "spark-connect-token"  # noqa: S105 - a Secret name, not a value
CONNECT_TOKEN_ENV = "DATACLOUD_SPARK_CONNECT_TOKEN"  # noqa: S105 - a variable name (not pyspark's own: see datacloud_spark.py)
# Labels KubeSpawner/z2jh put on user pods (manifests/monitoring/chart-labels.yaml records where they come from).
NOTEBOOK_LABELS = dict(spark.NOTEBOOK_POD_LABELS)
# What earlier versions of this stage applied for notebook executors, deleted by apply when present:
# (kind, name, namespace or None for cluster-scoped).
RETIRED = (
    ("rolebinding", "notebook-spark-executors", JUPYTER_NS),
    ("role", "notebook-spark-executors", JUPYTER_NS),
    ("networkpolicy", "notebook-spark-executors", JUPYTER_NS),
    ("validatingadmissionpolicybinding", "datacloud-notebook-executors", None),
    ("validatingadmissionpolicy", "datacloud-notebook-executors", None),
)


def image(inv: Inventory) -> tuple[str, str]:
    """(name, tag) of the single-user image: ``<images.registry>/jupyter-spark`` and ``<tag>[@digest]``."""
    return name_and_tag(own_image(inv, "jupyter"))


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def hub_release(inv: Inventory, signup: bool = False) -> Release:
    """The chart release; ``signup`` opens the sign-up page (only once the admin's account exists)."""
    j = inv.components.jupyter
    net = netpol_context(inv)
    classes = storage_classes(inv)
    chart = versions()["jupyter"]["chart"]
    name, tag = image(inv)
    values: dict[str, Any] = {
        "hub": {
            "config": {
                "JupyterHub": {"authenticator_class": "nativeauthenticator.NativeAuthenticator"},
                "Authenticator": {"admin_users": [ADMIN_USER]},
                "NativeAuthenticator": {
                    "enable_signup": signup,
                    "open_signup": False,  # a new account waits for an admin's approval
                    "minimum_password_length": 12,
                    "check_common_password": True,
                    "allowed_failed_logins": 5,
                    "seconds_before_next_try": 600,
                },
                # Notebook pods get no Kubernetes credential at all (KubeSpawner would mount the
                # named ServiceAccount's token).
                "KubeSpawner": {"automount_service_account_token": False},
            },
            "resources": resources(j.hub),
            "db": {"type": "sqlite-pvc", "pvc": {"storageClassName": classes["block"], "storage": "1Gi"}},
            "networkPolicy": {"enabled": True},
        },
        "proxy": {
            "service": {"type": "ClusterIP"},
            "https": {"enabled": False},
            "chp": {"resources": resources(j.proxy), "networkPolicy": {"enabled": True}},
        },
        "singleuser": {
            "image": {"name": name, "tag": tag, "pullPolicy": pull_policy(own_image(inv, "jupyter"))},
            "serviceAccountName": NOTEBOOK_SA,
            "cpu": {"guarantee": j.user.cpu_m / 1000, "limit": max(1.0, j.user.cpu_m * 4 / 1000)},
            "memory": {"guarantee": f"{j.user.memory_mb}M", "limit": f"{j.user.limit_mb}M"},
            "storage": {
                "type": "dynamic",
                "capacity": f"{j.volume_gb}Gi",
                "dynamic": {"storageClass": classes["block"]},
                "homeMountPath": "/home/jovyan",
            },
            "startTimeout": 600,
            "extraEnv": {
                "SPARK_CONNECT_URL": spark.connect_url(),
                CONNECT_TOKEN_ENV: {
                    "valueFrom": {"secretKeyRef": {"name": CONNECT_TOKEN_SECRET, "key": "token", "optional": True}}
                },
                "MONGODB_URI": {"valueFrom": {"secretKeyRef": {"name": MONGO_SECRET, "key": "uri", "optional": True}}},
            },
            "networkPolicy": {
                "enabled": True,
                # Spark Connect: our NetworkPolicy allow-notebooks-to-spark-connect (networkpolicies.yaml.j2).
                "egress": [
                    {
                        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": net["mongo_ns"]}}}],
                        "ports": _ports(net["mongo_port"]),
                    },
                ],
                "egressAllowRules": {"privateIPs": False, "nonPrivateIPs": True, "dnsPortsPrivateIPs": True},
            },
        },
        "cull": {"enabled": True, "timeout": j.cull_idle_s, "every": 300, "users": False, "maxAge": 0},
        # Small-cluster profile: no image-puller DaemonSets, no user scheduler or placeholders
        # (the capacity catalogue counts hub and proxy only).
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
        "scheduling": {
            "userScheduler": {"enabled": False},
            "podPriority": {"enabled": False},
            "userPlaceholder": {"enabled": False},
        },
    }
    return Release(RELEASE, JUPYTER_NS, chart["name"], chart["repo"], str(chart["version"]), values)


def _context(inv: Inventory) -> dict[str, Any]:
    return {
        "ns": JUPYTER_NS,
        "notebook_sa": NOTEBOOK_SA,
        "notebook_labels": NOTEBOOK_LABELS,
        "connect_ns": SPARK_CONNECT_NS,
        "connect_port": spark.CONNECT_PORT,
        "connect_server_labels": spark.CONNECT_SERVER_LABELS,
        "net": netpol_context(inv),
    }


STEMS = ("namespace", "rbac", "networkpolicies")


def services(inv: Inventory) -> dict[str, str]:
    """The navigation links this stage gives the Airflow UI once it ran (through `./dev tunnels`)."""
    from datacloud import tunnels

    return tunnels.links(inv, "jupyter")


def render(inv: Inventory) -> Rendered:
    ctx = _context(inv)
    objects = {stem: render_template(f"jupyter/{stem}.yaml.j2", **ctx) for stem in STEMS}
    return Rendered(objects=objects, releases=[hub_release(inv)])


# --- run side (the stage contract of datacloud.stages: STEPS) -------------------


def _outcome(step: str, changes: list[str], dry_run: bool, **facts: Any) -> dict[str, Any]:
    from datacloud.stages._common import outcome

    return outcome("jupyter", step, changes, dry_run, **facts)


def notebook_mongo_secret(kube: Any) -> tuple[dict[str, Any] | None, str]:
    """The Secret `notebook-mongo` (key `uri`) from the mongo stage's application user, or why not."""
    from datacloud.stages.apps_common import mongo_uri_secret

    return mongo_uri_secret(kube, MONGO_SECRET, JUPYTER_NS, "notebook")


def notebook_connect_secret(kube: Any) -> tuple[dict[str, Any] | None, str]:
    """The Secret `spark-connect-token` for notebooks (key `token`) from the spark stage's, or why not."""
    from datacloud.stages.apps_common import secret_object, secret_value

    token = spark.connect_token(kube)
    if token is None:
        return None, f"Secret {SPARK_CONNECT_NS}/{spark.CONNECT_TOKEN_SECRET} does not exist yet (run the spark stage)"
    if secret_value(kube, CONNECT_TOKEN_SECRET, JUPYTER_NS, "token") == token:
        return None, "unchanged"
    return secret_object(CONNECT_TOKEN_SECRET, JUPYTER_NS, {"token": token}, "notebook"), "changed"


def retire(kube: Any, dry_run: bool) -> list[str]:
    """Delete what earlier versions applied for notebook executors (RETIRED), where it still exists."""
    changes = []
    for kind, name, namespace in RETIRED:
        if kube.get_json(kind, name, namespace=namespace) is None:
            continue
        where = f"{namespace}/" if namespace else ""
        if dry_run:
            changes.append(f"would delete {kind} {where}{name} (notebooks create no pods any more)")
            continue
        ns_args = ("--namespace", namespace) if namespace else ()
        kube.kubectl("delete", kind, name, *ns_args, "--ignore-not-found")
        changes.append(f"deleted {kind} {where}{name} (notebooks create no pods any more)")
    return changes


def apply(ctx: Any) -> dict[str, Any]:
    """Images agree; namespace, identity and policies; the MongoDB URI Secret; the JupyterHub chart."""
    from datacloud.images import check_versions

    check_versions()
    spark.require_registry(ctx.inv)  # else the executors and user pods would pull our images from Docker Hub
    rendered = render(ctx.inv)
    kube = ctx.kube()
    changes: list[str] = []
    for stem in STEMS:
        changes += [f"{oid} applied" for oid in kube.apply(rendered.objects[stem]).changed]
    changes += retire(kube, ctx.dry_run)
    token, why = notebook_connect_secret(kube)
    if token is not None:
        if not ctx.dry_run:
            kube.apply([token])
        changes.append(
            f"Secret {JUPYTER_NS}/{CONNECT_TOKEN_SECRET} {'would be ' if ctx.dry_run else ''}written (Spark Connect token)"
        )
    elif why != "unchanged":
        log.warning("JupyterHub | Spark Connect | %s; spark_session() fails in notebooks until the stage runs again", why)
    secret, why = notebook_mongo_secret(kube)
    if secret is not None:
        kube.apply([secret])
        changes.append(f"Secret {JUPYTER_NS}/{MONGO_SECRET} written (MongoDB URI for notebooks)")
    elif why != "unchanged":
        log.warning("JupyterHub | MongoDB | %s; notebooks start without MONGODB_URI until the stage runs again", why)
    signup = signup_open(kube)  # closed on a first install: the admin step opens it
    release = hub_release(ctx.inv, signup=signup)
    if kube.helm_upgrade(release):
        changes.append(f"helm release {release.name} {release.chart} {release.version} installed or upgraded")
    if not ctx.dry_run:
        kube.rollout_status("deployment", "hub", namespace=JUPYTER_NS, timeout_s=600)
        kube.rollout_status("deployment", "proxy", namespace=JUPYTER_NS, timeout_s=300)
    return _outcome("apply", changes, ctx.dry_run, admin_user=ADMIN_USER, signup_open=signup)


ADMIN_SECRET = "jupyterhub-admin"  # noqa: S105 - a Secret name; key `password`, generated at run time
HUB_DB_URL = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"  # the chart's hub.db.type sqlite-pvc
BOOTSTRAP_FILE = MANIFESTS_DIR / "jupyter" / "bootstrap_admin.py"
# On Secret jupyterhub-admin once the hub holds the admin's account with that password:
# from then on the chart is rendered with sign-up open.
ADMIN_CONFIRMED = "datacloud/hub-account"


def _admin_secret(kube: Any) -> tuple[str | None, dict[str, str]]:
    """The admin's password (masked) and the Secret's annotations; (None, {}) when there is no Secret."""
    from datacloud.connections import mask
    from datacloud.stages.apps_common import secret_value

    obj = kube.get_json("secret", ADMIN_SECRET, namespace=JUPYTER_NS)
    if obj is None:
        return None, {}
    password = secret_value(kube, ADMIN_SECRET, JUPYTER_NS, "password")
    if password is not None:
        mask(password)
    return password, dict((obj.get("metadata") or {}).get("annotations") or {})


def signup_open(kube: Any) -> bool:
    """Whether the admin step has confirmed the admin's account (so sign-up may open)."""
    return _admin_secret(kube)[1].get(ADMIN_CONFIRMED) == "true"


def _rotation_requested(annotations: dict[str, str]) -> bool:
    from datacloud.errors import UserError

    value = annotations.get(ROTATE_ANNOTATION)
    if value not in (None, "true"):
        raise UserError(
            f"Secret {JUPYTER_NS}/{ADMIN_SECRET} has annotation {ROTATE_ANNOTATION}={value[:40]!r}; set it to true to "
            f"rotate the admin's password, or remove it with: "
            f"kubectl annotate secret --namespace {JUPYTER_NS} {ADMIN_SECRET} {ROTATE_ANNOTATION}-"
        )
    return value == "true"


def ensure_admin(ctx: Any) -> dict[str, Any]:
    """Create the admin's NativeAuthenticator account (password in Secret jupyter/jupyterhub-admin), then open sign-up.

    The chart is installed with sign-up closed until this step has put the account
    named in admin_users into the hub's database, with a password we chose: a
    sign-up under that name is authorized as admin without approval. An account that
    exists with another password fails the step. ``datacloud/rotate=true`` on the
    Secret gives the account and the Secret a new password.
    """
    import json
    import secrets as pysecrets

    from datacloud.connections import mask
    from datacloud.errors import TransientError, UserError
    from datacloud.stages.apps_common import secret_object

    kube = ctx.kube()
    changes: list[str] = []
    password, annotations = _admin_secret(kube)
    rotate = password is not None and _rotation_requested(annotations)
    confirmed = annotations.get(ADMIN_CONFIRMED) == "true"

    def write_secret(value: str, confirm: bool) -> None:
        obj = secret_object(ADMIN_SECRET, JUPYTER_NS, {"username": ADMIN_USER, "password": value}, "hub")
        if confirm:
            obj["metadata"]["annotations"] = {ADMIN_CONFIRMED: "true"}
        kube.apply([obj])

    if password is None or rotate:
        password = pysecrets.token_urlsafe(24)
        mask(password)
        write_secret(password, confirmed)  # the annotation stays until the hub has the new password
        changes.append(f"Secret {JUPYTER_NS}/{ADMIN_SECRET} {'rotated' if rotate else 'generated'} ({ADMIN_USER}'s password)")
    if ctx.dry_run:
        return _outcome(
            "admin", changes, True, admin_user=ADMIN_USER, note="the account itself is checked in the hub at run time"
        )
    spec = json.dumps({"db_url": HUB_DB_URL, "username": ADMIN_USER, "password": password, "rotate": rotate})
    res = kube.kubectl(
        "exec", "-i", "--namespace", JUPYTER_NS, "deploy/hub", "--", "python3", "-c", BOOTSTRAP_FILE.read_text(),
        stdin=spec, check=False, quiet=True,
    )  # fmt: skip
    word = res.stdout.strip().splitlines()[-1] if res.rc == 0 and res.stdout.strip() else ""
    if word == "created":
        changes.append(f"JupyterHub account {ADMIN_USER} created (authorized admin)")
    elif word == "rotated":
        changes.append(f"JupyterHub account {ADMIN_USER} has the new password")
    elif word == "exists-other-password":
        raise UserError(
            f"the JupyterHub account {ADMIN_USER} exists with a password that is not the one in Secret "
            f"{JUPYTER_NS}/{ADMIN_SECRET}, so someone may have claimed the admin's name; sign-up stays closed. If "
            f"nobody on your team set it, delete the account in the hub; to give it the Secret's password run "
            f"kubectl annotate secret --namespace {JUPYTER_NS} {ADMIN_SECRET} {ROTATE_ANNOTATION}=true and run the stage again"
        )
    elif word != "exists":
        raise TransientError(
            f"creating the JupyterHub admin account failed: {(res.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    if rotate:
        kube.kubectl("annotate", "secret", ADMIN_SECRET, "--namespace", JUPYTER_NS, f"{ROTATE_ANNOTATION}-")
    if not confirmed:
        write_secret(password, True)
        release = hub_release(ctx.inv, signup=True)
        kube.helm_upgrade(release)
        kube.rollout_status("deployment", "hub", namespace=JUPYTER_NS, timeout_s=600)
        changes.append(f"sign-up opened (the admin account {ADMIN_USER} exists; new accounts wait for its approval)")
    return _outcome("admin", changes, False, admin_user=ADMIN_USER, admin_secret=f"{JUPYTER_NS}/{ADMIN_SECRET}")


def verify(ctx: Any) -> dict[str, Any]:
    """The hub answers its REST API and reports NativeAuthenticator."""
    import json

    from datacloud.errors import TransientError

    if ctx.dry_run:
        return _outcome("verify", [], True, verified=False)
    kube = ctx.kube()
    probe = (
        "import json, urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8081/hub/api/', timeout=10).read().decode())"
    )
    res = kube.kubectl("exec", "--namespace", JUPYTER_NS, "deploy/hub", "--", "python3", "-c", probe, check=False, quiet=True)
    if res.rc != 0:
        raise TransientError(f"the JupyterHub API did not answer: {(res.stderr.strip().splitlines() or ['no output'])[-1]}")
    version = json.loads(res.stdout).get("version")
    log.info("JupyterHub | Verify | hub %s answers; sign in at the proxy (docs/services.md)", version)
    return _outcome("verify", [], False, verified=True, hub_version=version)


def _steps() -> list[Any]:
    from datacloud.stages._common import Step

    return [Step("apply", apply), Step("admin", ensure_admin), Step("verify", verify)]


STEPS = _steps()
