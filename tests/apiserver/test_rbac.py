"""Real RBAC: what every ServiceAccount the platform creates may and may not do.

The stages' and the charts' RBAC objects are applied for real on the fixture's API
server (RBAC authorizer, the built-in roles aggregated by the real controller);
each row below is asked with ``kubectl auth can-i --as=system:serviceaccount:NS:SA``.
A check is ``"VERB RESOURCE NAMESPACE"``; namespace ``*`` means all namespaces
(and cluster-scoped resources).

Every ServiceAccount gets the ADMINISH checks and MONGO_SECRETS (expected "no")
unless its row exempts them, saying why; a ServiceAccount without a row fails
``test_every_service_account_has_a_row``. The ``default`` ServiceAccount of every
platform namespace (what pods without their own identity run as) may do none of it.
The ServiceAccounts of every inventory are here (Calico's operator and flannel's
agents both), since the objects of all inventories are applied on one server.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.apiserver.platform import access_reviews, can_i, resource_groups

ADMINISH = (
    "* * *",
    "create clusterrolebindings *",
    "escalate clusterroles *",
    "bind clusterroles *",
    "impersonate users *",
    "impersonate serviceaccounts *",
    "create serviceaccounts/token *",
    "create pods/exec *",
    "delete nodes *",
)
MONGO_SECRETS = "get secrets mongo"  # the MongoDB users' passwords
EXECUTOR_KINDS = ("pods", "services", "configmaps", "persistentvolumeclaims")


@dataclass(frozen=True)
class Row:
    may: tuple[str, ...] = ()
    may_not: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()  # baseline checks this identity legitimately passes
    why: str = ""


NO_API = Row(may_not=("get pods *", "list configmaps *", "get secrets *"), why="no Role or binding: no API access")
CSI_SECRETS = "reads the Secrets StorageClasses reference (Ceph keys) in any namespace"

TABLE: dict[str, Row] = {
    # --- ours ---
    "spark-jobs/spark": Row(
        may=tuple(f"{v} {k} spark-jobs" for k in EXECUTOR_KINDS for v in ("create", "delete", "watch")),
        may_not=(
            "create pods jupyter", "create pods default", "get secrets spark-jobs", "list secrets *",
            "create pods/exec spark-jobs", "create deployments spark-jobs", "create roles spark-jobs", "list pods *",
        ),
        why="Spark drivers manage their executors in spark-jobs, nothing else",
    ),
    "spark-jobs/spark-history-server": Row(
        may_not=("get pods spark-jobs", "list configmaps spark-jobs", "get secrets spark-jobs"),
        why="reads event logs from its volume; no API access",
    ),
    "jupyter/spark-notebook": Row(
        may_not=(
            "create pods jupyter", "delete pods jupyter", "deletecollection pods jupyter", "list pods jupyter",
            "get pods jupyter", "watch pods jupyter", "create services jupyter", "update services jupyter",
            "patch endpoints jupyter", "create endpointslices.discovery.k8s.io jupyter", "get secrets jupyter",
            "list secrets jupyter", "create pods spark-connect", "create pods spark-jobs", "list pods *",
            "create configmaps jupyter", "create persistentvolumeclaims jupyter", "create pods/exec jupyter",
        ),
        why="notebooks run Spark through the Connect server: no Role, no token mounted, no API access",
    ),
    "spark-connect/spark-connect": Row(
        may=(
            *(f"{v} {k} spark-connect" for k in ("pods", "configmaps") for v in ("create", "delete", "deletecollection", "watch")),
            "list persistentvolumeclaims spark-connect",
        ),
        may_not=(
            "create pods jupyter", "create pods spark-jobs", "create pods default", "list pods *",
            "get secrets spark-connect", "list secrets spark-connect", "create services spark-connect",
            "create persistentvolumeclaims spark-connect", "update pods spark-connect", "patch pods spark-connect",
            "create pods/exec spark-connect", "create pods/ephemeralcontainers spark-connect", "create deployments spark-connect",
            "create sparkapplications.sparkoperator.k8s.io spark-jobs", "update sparkconnects.sparkoperator.k8s.io spark-connect",
            "create rolebindings spark-connect",
        ),
        why="the Connect server creates its executor pods in spark-connect only (which pods: the admission policy)",
    ),
    "spark-jobs/airflow-submitter": Row(
        may=(
            "create sparkapplications.sparkoperator.k8s.io spark-jobs", "delete sparkapplications.sparkoperator.k8s.io spark-jobs",
            "watch sparkapplications.sparkoperator.k8s.io spark-jobs", "get sparkapplications.sparkoperator.k8s.io/status spark-jobs",
            "get pods/log spark-jobs", "list pods spark-jobs", "create configmaps spark-jobs",
            # each application's landing ConfigMap: written before the submission, deleted after it
            "update configmaps spark-jobs", "delete configmaps spark-jobs",
        ),
        may_not=(
            "create sparkapplications.sparkoperator.k8s.io default", "create sparkapplications.sparkoperator.k8s.io spark-connect",
            "create sparkapplications.sparkoperator.k8s.io jupyter", "list sparkapplications.sparkoperator.k8s.io *",
            "get secrets spark-jobs", "list secrets spark-jobs", "list secrets *", "create pods spark-jobs",
            "delete pods spark-jobs", "patch pods spark-jobs", "create pods/exec spark-jobs",
            "update sparkapplications.sparkoperator.k8s.io/status spark-jobs", "create scheduledsparkapplications.sparkoperator.k8s.io spark-jobs",
            "create sparkconnects.sparkoperator.k8s.io spark-connect", "list configmaps spark-jobs",
            "delete configmaps spark-connect", "delete configmaps jupyter", "get pods/log spark-connect",
        ),
        why="Airflow's Spark submission (datacloud_kubernetes_spark): SparkApplications in spark-jobs, nothing else",
    ),
    "monitoring/headlamp": Row(
        # (custom resources only where their CRD aggregates to view: not Percona's, so not PSMDB objects)
        may=("list pods *", "get deployments mongo", "get statefulsets mongo", "list services *", "get pods/log mongo"),
        may_not=(
            "get secrets monitoring", "list secrets *", "delete pods mongo", "create deployments monitoring",
            "patch configmaps monitoring", "update perconaservermongodbs.psmdb.percona.com mongo",
        ),
        why="the built-in view role: reads workloads, never Secrets, writes nothing",
    ),
    "kube-flannel/flannel": Row(
        may=("get nodes *", "patch nodes/status *", "get pods *"),
        may_not=("update nodes *", "list secrets *", "create pods kube-flannel", "patch pods kube-system"),
        why="flannel (network.cni flannel): reads nodes and pods, writes only node status",
    ),
    "kube-system/kube-network-policies": Row(
        may=("watch networkpolicies.networking.k8s.io *", "list pods *", "list namespaces *"),
        may_not=("create networkpolicies.networking.k8s.io *", "get secrets kube-system", "list secrets *", "update pods *"),
        why="the NetworkPolicy agent next to flannel: reads policies, pods and namespaces, writes nothing",
    ),
    "local-path-storage/local-path-provisioner": Row(
        may=("create persistentvolumes *", "create pods local-path-storage", "watch persistentvolumeclaims *"),
        may_not=("create pods mongo", "get secrets local-path-storage"),
        why="provisions host-path volumes through helper pods in its namespace",
    ),
    # --- chart identities ---
    "mongo/psmdb-operator": Row(
        may=("create statefulsets mongo", "get secrets mongo", "update perconaservermongodbs.psmdb.percona.com mongo"),
        may_not=("get secrets jupyter", "get secrets monitoring", "list secrets *", "create pods spark-jobs"),
        exempt=(MONGO_SECRETS,),
        why="watchAllNamespaces false: the operator's Role in mongo only",
    ),
    "spark-operator/spark-operator-controller": Row(
        may=(
            "create pods spark-jobs", "update sparkapplications.sparkoperator.k8s.io spark-jobs", "create pods spark-connect",
            "update sparkconnects.sparkoperator.k8s.io/status spark-connect",
        ),
        may_not=("create pods jupyter", "create pods default", "list secrets *"),
        why="submits applications in spark-jobs and runs the Connect server in spark-connect (spark.jobNamespaces)",
    ),
    "spark-operator/spark-operator-webhook": Row(
        may=("get sparkapplications.sparkoperator.k8s.io spark-jobs",),
        may_not=("create pods spark-jobs", "list secrets *"),
        why="admission webhook: reads applications, creates nothing in spark-jobs",
    ),
    "jupyter/hub": Row(
        may=("create pods jupyter", "create persistentvolumeclaims jupyter", "delete pods jupyter"),
        may_not=("create pods spark-jobs", "get secrets monitoring", "list pods *"),
        why="KubeSpawner: user pods and claims in jupyter",
    ),
    "monitoring/kube-prometheus-stack-operator": Row(
        may=("create statefulsets monitoring", "list servicemonitors.monitoring.coreos.com *", "get secrets monitoring"),
        may_not=("create pods spark-jobs",),
        exempt=(MONGO_SECRETS,),
        why="the Prometheus operator watches every namespace and reads the Secrets monitors reference (upstream)",
    ),
    "monitoring/kube-prometheus-stack-prometheus": Row(
        may=("list pods *", "list endpointslices.discovery.k8s.io *", "get nodes/metrics *"),
        may_not=("create pods monitoring", "list secrets *"),
        why="service discovery across namespaces; reads, writes nothing",
    ),
    "monitoring/kube-prometheus-stack-grafana": Row(
        may=("watch configmaps monitoring", "get secrets monitoring"),
        may_not=("list configmaps mongo", "list secrets *", "create pods monitoring"),
        why="sidecars watch dashboards/datasources in monitoring only (rbac.namespaced)",
    ),
    "monitoring/kube-prometheus-stack-kube-state-metrics": Row(
        may=("list pods *", "list deployments *", "list nodes *"),
        may_not=("create pods monitoring", "delete pods monitoring", "update deployments *"),
        why="reads objects for metrics (its default collectors list Secrets too: upstream)",
        exempt=(MONGO_SECRETS,),
    ),
    "monitoring/kube-prometheus-stack-alertmanager": NO_API,
    "monitoring/kube-prometheus-stack-prometheus-node-exporter": NO_API,
    "monitoring/kube-prometheus-stack-admission": Row(
        may=("update validatingwebhookconfigurations *", "create secrets monitoring"),
        may_not=("create pods monitoring",),
        why="the chart's hook jobs: a TLS Secret and the webhooks' caBundle",
    ),
    "tigera-operator/tigera-operator": Row(
        may=("create daemonsets *", "create clusterrolebindings *"),
        may_not=("* * *", "impersonate users *", "impersonate serviceaccounts *"),
        exempt=(*ADMINISH, MONGO_SECRETS),
        why="installs Calico with its own RBAC (upstream design); still not cluster-admin",
    ),
    "rook-ceph/rook-ceph-system": Row(
        # cluster-wide (upstream: a CephCluster may live in any namespace), so deployments in mongo too
        may=("create deployments rook-ceph", "update cephclusters.ceph.rook.io rook-ceph", "get secrets rook-ceph", "create deployments mongo"),
        may_not=("delete namespaces *", "create clusterroles *"),
        exempt=(MONGO_SECRETS, "create pods/exec *"),  # upstream: runs ceph commands inside its pods
        why="the Rook operator: " + CSI_SECRETS,
    ),
    "rook-ceph/rook-ceph-mgr": Row(
        may=("get cephclusters.ceph.rook.io rook-ceph",), may_not=("create pods mongo",), why="the Ceph mgr's orchestrator module"
    ),
    "rook-ceph/rook-ceph-osd": Row(may=("get configmaps rook-ceph",), may_not=("create pods rook-ceph",), why="OSD pods read their config"),
    "rook-ceph/rook-ceph-cmd-reporter": Row(may=("create configmaps rook-ceph",), may_not=("create pods mongo",), why="reports command output"),
    "rook-ceph/rook-ceph-purge-osd": Row(may=("delete deployments rook-ceph",), may_not=("delete deployments mongo",), why="removes OSDs"),
    "rook-ceph/rook-ceph-default": NO_API,
    "rook-ceph/rook-ceph-rgw": NO_API,
    "rook-ceph/rook-ceph-nvmeof": NO_API,
    "rook-ceph/objectstorage-provisioner": Row(
        may=("get secrets rook-ceph",), may_not=("create pods rook-ceph",), exempt=(MONGO_SECRETS,), why="COSI provisioner: " + CSI_SECRETS
    ),
    **{
        f"rook-ceph/{sa}": Row(
            may=("get secrets rook-ceph",),
            may_not=("create pods mongo",),
            # upstream: the drivers request ServiceAccount tokens (KMS via Vault tokens)
            exempt=(MONGO_SECRETS, "create serviceaccounts/token *"),
            why="a CSI identity: " + CSI_SECRETS,
        )
        for sa in (
            "rook-csi-rbd-provisioner-sa", "rook-csi-rbd-plugin-sa", "rook-csi-cephfs-provisioner-sa",
            "rook-csi-cephfs-plugin-sa", "ceph-csi-rbd-ctrlplugin-sa", "ceph-csi-rbd-nodeplugin-sa",
            "ceph-csi-cephfs-ctrlplugin-sa", "ceph-csi-cephfs-nodeplugin-sa", "ceph-csi-nvmeof-ctrlplugin-sa",
            "ceph-csi-nvmeof-nodeplugin-sa", "ceph-csi-nfs-ctrlplugin-sa",
        )
    },
    "rook-ceph/ceph-csi-nfs-nodeplugin-sa": NO_API,
    "rook-ceph/ceph-csi-controller-manager": Row(
        # its manager role is cluster-wide (upstream): drivers may be deployed in any namespace
        may=("create daemonsets rook-ceph", "update drivers.csi.ceph.io rook-ceph", "create daemonsets mongo"),
        may_not=("get secrets rook-ceph", "delete namespaces *"),
        why="ceph-csi-operator: deploys the CSI drivers",
    ),
}  # fmt: skip


def test_every_service_account_has_a_row(rbac):
    assert rbac, "no ServiceAccount was applied"
    assert sorted(rbac - set(TABLE)) == [], "ServiceAccounts the platform creates without a row in TABLE"
    assert sorted(set(TABLE) - rbac) == [], "rows for ServiceAccounts the platform no longer creates"


def test_default_service_accounts_have_no_api_access(apiserver, rbac, namespaces, groups):
    """Pods without a ServiceAccount of their own (the notebooks' Spark executors, MongoDB's and
    Ceph's daemons...) run as their namespace's ``default``: nothing binds it to anything."""
    wrong = []
    for ns in sorted(namespaces):
        own = (f"get secrets {ns}", f"list pods {ns}", f"create pods {ns}")
        checks = [(c, False) for c in dict.fromkeys((*ADMINISH, MONGO_SECRETS, *own))]
        answers = access_reviews(apiserver, f"{ns}/default", [_parse(c) for c, _want in checks], groups)
        wrong += [f"{ns}/default: {c!r}" for (c, _want), got in zip(checks, answers, strict=True) if got]
    assert len(namespaces) > 8
    assert not wrong, "default ServiceAccounts with API access:\n  " + "\n  ".join(wrong)


def _checks(row: Row) -> list[tuple[str, bool]]:
    baseline = [c for c in (*ADMINISH, MONGO_SECRETS) if c not in row.exempt]
    return [(c, True) for c in row.may] + [(c, False) for c in (*row.may_not, *baseline)]


OURS = [
    sa
    for sa in TABLE
    if sa.startswith(("spark-jobs/", "spark-connect/", "jupyter/spark-notebook", "monitoring/headlamp", "local-path-storage/"))
]


@pytest.fixture(scope="module")
def groups(apiserver, crds):
    return resource_groups(apiserver)


@pytest.mark.parametrize("sa", sorted(TABLE))
def test_service_account_may_and_may_not(apiserver, rbac, groups, sa):
    row = TABLE[sa]
    assert sa in rbac, f"{sa} is not created by the platform"
    checks = _checks(row)
    answers = access_reviews(apiserver, sa, [_parse(c) for c, _want in checks], groups)
    wrong = [f"{c!r}: expected {'yes' if want else 'no'}" for (c, want), got in zip(checks, answers, strict=True) if got != want]
    assert not wrong, f"{sa} ({row.why}):\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("sa", sorted(OURS))
def test_our_service_accounts_with_kubectl_auth_can_i(apiserver, rbac, sa):
    """The platform's own identities once more, one ``kubectl auth can-i --as=...`` per check."""
    row = TABLE[sa]
    checks = _checks(row)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: can_i(apiserver, sa, *_parse(c[0])), checks))
    wrong = [f"{c!r}: expected {'yes' if want else 'no'}" for (c, want), got in zip(checks, answers, strict=True) if got != want]
    assert not wrong, f"{sa} ({row.why}):\n  " + "\n  ".join(wrong)


def _parse(check: str) -> tuple[str, str, str | None]:
    verb, resource, ns = check.split()
    return verb, resource, None if ns == "*" else ns
