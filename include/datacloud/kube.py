"""Apply and observe things on the cluster: kubectl and helm run on the control plane.

Stages never talk to the Kubernetes API from the Airflow worker: the private
network is reachable only over SSH, so ``Kube`` runs ``kubectl``/``helm`` on
the control-plane node through :class:`datacloud.remote.Remote`, with the
admin kubeconfig that ``kubeadm init`` wrote there (``/etc/kubernetes/admin.conf``).

API for stages (``ctx.kube()`` gives one, see ``datacloud.stages``)::

    kube.apply(objects)            # server-side apply; returns ApplyResult(changed, unchanged)
    kube.helm_upgrade(release)     # helm upgrade --install, pinned version, values on stdin; idempotent
    kube.wait("deployment", name, namespace=ns, condition="Available")
    kube.rollout_status("daemonset", name, namespace=ns)
    kube.get_json("nodes")         # parsed `kubectl get -o json`; None when it does not exist
    kube.exists("namespace", "rook-ceph")
    kube.kubectl("label", "node", name, "x=y")   # anything else, quoted word by word

With ``dry_run=True`` nothing is changed: ``apply`` reports what differs
(``kubectl diff``; an object whose namespace or CRD the run would create
first counts as "would create"), ``helm_upgrade`` reports whether the release differs.
Outputs that may contain secrets (``get_json``, helm values) are not logged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from datacloud.errors import TransientError, UserError
from datacloud.inventory import Inventory
from datacloud.remote import CommandError, Remote, Result

log = logging.getLogger(__name__)

ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
# kubectl diff's answer for an object whose namespace, or whose kind's CRD, does not exist yet
_NOT_THERE_YET = re.compile(r'namespaces "[^"]+" not found|no matches for kind|ensure CRDs are installed first')
FIELD_MANAGER = "datacloud"

# How helm (3.19) words a failure. Transient first: a chart repository or API server that
# does not answer, a timeout, a lock held by another operation; a retry may succeed.
HELM_TRANSIENT = re.compile(
    r"connection refused|connection reset|i/o timeout|timed out|timeout|deadline exceeded|no such host"
    r"|temporary failure|tls handshake|unexpected eof|cluster unreachable|service unavailable"
    r"|too many requests|the server is currently unable|another operation \(install/upgrade/rollback\) is in progress"
    r"|etcdserver",
    re.I,
)
# Deterministic: the same chart, version and values fail the same way on every retry.
HELM_DETERMINISTIC = re.compile(
    r"not found in \S+ repository|chart \S+ version \S+ not found|no chart version found|no chart name found"
    r"|values don't meet the specifications of the schema|error converting yaml to json|yaml parse error"
    r"|cannot unmarshal|unable to build kubernetes objects from release manifest|error validating data"
    r"|template: \S+:\d+|execution error at|chart requires kubeversion|invalid chart|is not a valid chart"
    r"|unknown field|status code 404|: not found$",
    re.I | re.M,
)


class HelmError(UserError):
    """helm refused the chart, its version or its values: retrying cannot help."""


def helm_failure(release_name: str, stderr: str) -> Exception:
    """The error for a failed ``helm upgrade``: HelmError (no retries) or TransientError, from helm's stderr.

    Judged on helm's ``Error:`` line (the lines after it quote values and schema paths, which may
    contain words like "timeout"); a failure neither list knows stays transient.
    """
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    first = next((ln for ln in lines if ln.startswith("Error:")), lines[-1] if lines else "no output").rstrip(":")
    if HELM_TRANSIENT.search(first):
        return TransientError(f"helm upgrade of {release_name} failed: {first}")
    if HELM_DETERMINISTIC.search(first):
        return HelmError(
            f"helm upgrade of {release_name} failed: {first} "
            "(the chart, its pinned version in manifests/versions.yaml or the rendered values are wrong; a retry fails the same way)."
        )
    return TransientError(f"helm upgrade of {release_name} failed: {first}")


@dataclass
class ApplyResult:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def any_changed(self) -> bool:
        return bool(self.changed)


def object_id(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind', '?')}/{(ns + '/') if ns else ''}{meta.get('name', '?')}"


def chart_repository(inv: Inventory, release) -> str:
    """Where a release's chart comes from: the inventory's chart mirror, else the chart's upstream repository."""
    return inv.packages.chart_repository or release.repo


class Kube:
    """kubectl and helm on the control plane."""

    def __init__(self, inv: Inventory, remote: Remote | None = None, *, dry_run: bool = False) -> None:
        self.inv = inv
        self.remote = remote or Remote(inv, inv.control_plane)
        self.dry_run = dry_run
        self._available: bool | None = None

    def close(self) -> None:
        self.remote.close()

    def available(self) -> bool:
        """The control plane is initialised and kubectl and helm are installed there."""
        if self._available is None:
            probe = 'test -f "$1" && command -v kubectl >/dev/null && command -v helm >/dev/null'
            self._available = self.remote.run(["sh", "-c", probe, "sh", ADMIN_KUBECONFIG], check=False).rc == 0
        return self._available

    def _nothing_yet(self, what: str) -> bool:
        """In a dry run before the cluster exists, everything would be created."""
        if self.dry_run and not self.available():
            log.info("Kubernetes | Dry run | the cluster does not exist yet: would create %s", what)
            return True
        return False

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw tools --

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, quiet: bool = False, timeout: float | None = None
    ) -> Result:
        return self.remote.run(
            ["kubectl", "--kubeconfig", ADMIN_KUBECONFIG, *args],
            stdin=stdin,
            check=check,
            quiet=quiet,
            what="kubectl",
            timeout=timeout,
        )

    def helm(
        self, *args: str, stdin: str | None = None, check: bool = True, quiet: bool = False, timeout: float | None = None
    ) -> Result:
        return self.remote.run(
            ["helm", "--kubeconfig", ADMIN_KUBECONFIG, *args], stdin=stdin, check=check, quiet=quiet, what="helm", timeout=timeout
        )

    # -- observe --

    def get_json(self, kind: str, name: str | None = None, *, namespace: str | None = None, selector: str | None = None) -> Any:
        """``kubectl get -o json`` parsed; None when the named object does not exist."""
        args = ["get", kind]
        if name:
            args.append(name)
        if namespace:
            args += ["--namespace", namespace]
        if selector:
            args += ["--selector", selector]
        args += ["--output", "json"]
        res = self.kubectl(*args, check=False, quiet=True)
        if res.rc != 0:
            if "NotFound" in res.stderr or "not found" in res.stderr:
                return None
            raise CommandError(self.remote.node.name, f"kubectl get {kind}", res)
        return json.loads(res.stdout)

    def exists(self, kind: str, name: str, *, namespace: str | None = None) -> bool:
        return self.get_json(kind, name, namespace=namespace) is not None

    # -- change --

    def apply(self, objects: Sequence[dict[str, Any]]) -> ApplyResult:
        """Server-side apply, object by object; unchanged objects are not touched.

        ``kubectl diff --server-side`` tells whether an object differs (exit 0: no,
        1: yes); only differing objects are applied, so a second run reports
        everything unchanged and changes nothing.
        """
        result = ApplyResult(dry_run=self.dry_run)
        if self._nothing_yet(f"{len(objects)} object(s)"):
            result.changed = [object_id(o) for o in objects]
            return result
        for obj in objects:
            oid = object_id(obj)
            doc = json.dumps(obj)  # JSON is YAML; kubectl reads either
            diff = self.kubectl(
                "diff",
                "--server-side",
                "--field-manager",
                FIELD_MANAGER,
                "--force-conflicts",
                "-f",
                "-",
                stdin=doc,
                check=False,
                quiet=True,
            )
            if diff.rc == 0:
                result.unchanged.append(oid)
                continue
            if diff.rc != 1 and self.dry_run and _NOT_THERE_YET.search(diff.stderr):
                # a dry run: the namespace or CRD the run itself would create first is missing
                result.changed.append(oid)
                log.info("Kubernetes | Apply | would create %s (%s)", oid, diff.stderr.strip().splitlines()[0])
                continue
            if diff.rc != 1:
                raise CommandError(self.remote.node.name, f"kubectl diff {oid}", diff)
            result.changed.append(oid)
            if self.dry_run:
                log.info("Kubernetes | Apply | would change %s", oid)
                continue
            self.kubectl("apply", "--server-side", "--field-manager", FIELD_MANAGER, "--force-conflicts", "-f", "-", stdin=doc)
            log.info("Kubernetes | Apply | %s changed", oid)
        if not result.changed:
            log.info("Kubernetes | Apply | %d objects unchanged", len(result.unchanged))
        return result

    def helm_release(self, name: str, namespace: str) -> dict[str, Any] | None:
        res = self.helm("list", "--namespace", namespace, "--filter", f"^{name}$", "--output", "json", quiet=True)
        rows = json.loads(res.stdout or "[]")
        return rows[0] if rows else None

    def helm_upgrade(self, release, *, timeout_s: int = 900) -> bool:
        """``helm upgrade --install`` with the pinned chart version; True when something changed.

        Unchanged when the deployed release has the same chart version, status
        ``deployed`` and exactly these values. Values travel on stdin (never logged).
        """
        if self._nothing_yet(f"the Helm release {release.name} ({release.chart} {release.version})"):
            return True
        current = self.helm_release(release.name, release.namespace)
        want_values = json.loads(json.dumps(release.values))
        if current is not None:
            deployed_chart = current.get("chart", "")
            same_chart = deployed_chart == f"{release.chart.rsplit('/', 1)[-1]}-{release.version}"
            values = self.helm("get", "values", release.name, "--namespace", release.namespace, "--output", "json", quiet=True)
            have_values = json.loads(values.stdout or "null") or {}
            if same_chart and current.get("status") == "deployed" and have_values == want_values:
                log.info("Helm | %s | unchanged (chart %s)", release.name, deployed_chart)
                return False
        if self.dry_run:
            log.info("Helm | %s | would install or upgrade to %s %s", release.name, release.chart, release.version)
            return True
        repo = chart_repository(self.inv, release)
        if repo.startswith("oci://"):
            chart_args = [f"{repo.rstrip('/')}/{release.chart}"]
        else:
            chart_args = [release.chart, "--repo", repo]
        log.info("Helm | %s | upgrade --install %s %s in %s", release.name, release.chart, release.version, release.namespace)
        res = self.helm(
            "upgrade",
            "--install",
            release.name,
            *chart_args,
            "--version",
            release.version,
            "--namespace",
            release.namespace,
            "--create-namespace",
            "--values",
            "-",
            "--wait",
            "--timeout",
            f"{timeout_s}s",
            stdin=json.dumps(want_values),
            check=False,
            timeout=timeout_s + 60,
        )
        if res.rc != 0:
            err = helm_failure(release.name, res.stderr)
            if isinstance(err, TransientError):
                err = TransientError(f"{err}{self.why_waiting(release.namespace)}")
            raise err
        return True

    # -- wait --

    def wait(
        self,
        kind: str,
        name: str | None = None,
        *,
        namespace: str | None = None,
        condition: str = "Ready",
        selector: str | None = None,
        all_: bool = False,
        timeout_s: int = 300,
    ) -> None:
        """``kubectl wait --for=condition=...``; a timeout is transient (the task retries)."""
        args = ["wait", kind]
        if name:
            args.append(name)
        if all_:
            args.append("--all")
        if selector:
            args += ["--selector", selector]
        if namespace:
            args += ["--namespace", namespace]
        args += [f"--for=condition={condition}", f"--timeout={timeout_s}s"]
        res = self.kubectl(*args, check=False, timeout=timeout_s + 60)
        if res.rc != 0:
            why = self.why_waiting(namespace) if kind.startswith("pod") else ""
            raise TransientError(f"{kind} {name or selector or 'all'} did not become {condition} within {timeout_s}s{why}")

    def rollout_status(self, kind: str, name: str, *, namespace: str, timeout_s: int = 300) -> None:
        res = self.kubectl(
            "rollout",
            "status",
            f"{kind}/{name}",
            "--namespace",
            namespace,
            f"--timeout={timeout_s}s",
            check=False,
            timeout=timeout_s + 60,
        )
        if res.rc != 0:
            raise TransientError(
                f"{kind}/{name} in {namespace} did not finish rolling out within {timeout_s}s{self.why_waiting(namespace)}"
            )

    def why_waiting(self, namespace: str | None) -> str:
        """'; why: …' with the nodes' pressures and the reasons NAMESPACE's pods are not ready (pod_status),
        for the error of a wait that timed out; '' when nothing is known (the diagnosis never hides that error)."""
        from datacloud import pod_status

        try:
            ns = ["--namespace", namespace] if namespace else ["--all-namespaces"]
            pods = self.kubectl("get", "pods", *ns, "--output", "json", quiet=True, check=False, timeout=30)
            nodes = self.kubectl("get", "nodes", "--output", "json", quiet=True, check=False, timeout=30)
            why = pod_status.explain(
                json.loads(pods.stdout or "{}").get("items", []) if pods.rc == 0 else [],
                json.loads(nodes.stdout or "{}").get("items", []) if nodes.rc == 0 else [],
            )
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not replace the error it explains
            log.debug("Kubernetes | no diagnosis: %s", exc)
            return ""
        return f"; why: {why}" if why else ""
