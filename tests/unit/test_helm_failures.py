"""A failed helm upgrade: deterministic failures fail fast, transient ones are retried (issue 12, item 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datacloud.errors import TransientError, UserError
from datacloud.inventory import load_inventory
from datacloud.kube import Kube
from datacloud.remote import Result
from datacloud.render import Release

ROOT = Path(__file__).resolve().parents[2]

DETERMINISTIC = {
    "missing_version": 'Error: chart "rook-ceph" version "v9.9.9" not found in https://charts.rook.io/release repository',
    "missing_chart": 'Error: chart "rook-cephx" not found in https://charts.rook.io/release repository',
    "schema": (
        "Error: UPGRADE FAILED: values don't meet the specifications of the schema(s) in the following chart(s):\n"
        "jupyterhub:\n- cull.timeout: Invalid type. Expected: integer, given: string"
    ),
    "bad_values": "Error: failed to parse -: error converting YAML to JSON: yaml: line 3: mapping values are not allowed",
    "template": 'Error: UPGRADE FAILED: template: rook-ceph/templates/deployment.yaml:12:3: executing "x" at <.Values.a.b>: nil pointer',
    "invalid_object": (
        "Error: INSTALLATION FAILED: unable to build kubernetes objects from release manifest: "
        'error validating "": error validating data: ValidationError(Deployment.spec): unknown field "replica"'
    ),
    "oci_missing": 'Error: failed to perform "FetchReference" on source: registry.lan/charts/psmdb-operator:9.9.9: not found',
}
TRANSIENT = {
    "refused": 'Error: Kubernetes cluster unreachable: Get "https://10.0.0.11:6443/version": dial tcp 10.0.0.11:6443: connect: connection refused',
    "wait_timeout": "Error: UPGRADE FAILED: context deadline exceeded",
    "repo_unreachable": (
        'Error: looks like "https://charts.rook.io/release" is not a valid chart repository or cannot be reached: '
        'Get "https://charts.rook.io/release/index.yaml": dial tcp: lookup charts.rook.io: i/o timeout'
    ),
    "locked": "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
    "unknown": "Error: something helm has never said before",
}


class _FailingRemote:
    def __init__(self, stderr: str) -> None:
        self.stderr = stderr

    def run(self, cmd, **_):
        if "upgrade" in cmd:
            return Result(1, "", self.stderr)
        if "list" in cmd:
            return Result(0, "[]", "")
        return Result(0, "", "")


def _upgrade(stderr: str) -> None:
    kube = Kube(load_inventory(ROOT / "inventory.example.yaml"), _FailingRemote(stderr))
    kube.helm_upgrade(Release("rook-ceph", "rook-ceph", "rook-ceph", "https://charts.rook.io/release", "v9.9.9", {"a": 1}))


@pytest.mark.parametrize("stderr", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
def test_a_deterministic_helm_failure_fails_fast(stderr: str) -> None:
    with pytest.raises(UserError, match=r"^helm upgrade of rook-ceph failed: Error: .* a retry fails the same way\)\.$"):
        _upgrade(stderr)


@pytest.mark.parametrize("stderr", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_a_transient_helm_failure_is_retried(stderr: str) -> None:
    with pytest.raises(TransientError, match=r"^helm upgrade of rook-ceph failed: Error: "):
        _upgrade(stderr)
