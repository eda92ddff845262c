"""Monitoring follows the storage backend, and its dry run works before the mongo stage ever ran."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from datacloud.errors import UserError
from datacloud.stages import monitoring
from tests.unit.apps_fixtures import inventories
from tests.unit.kube_double import RecordingKubeDouble


def _monitors(inv_name: str) -> set[str]:
    objs = monitoring.render(inventories()[inv_name]).objects["monitors"]
    return {o["metadata"]["name"] for o in objs}


def test_ceph_mgr_is_scraped_only_where_ceph_is_installed() -> None:
    assert "rook-ceph-mgr" in _monitors("reference")
    assert "rook-ceph-mgr" not in _monitors("single-local-path")
    assert "serviceMonitor/monitoring/rook-ceph-mgr" in monitoring.scrape_pools(inventories()["reference"])
    assert monitoring.scrape_pools(inventories()["single-local-path"]) == (
        "serviceMonitor/monitoring/mongodb-exporter",
        "podMonitor/monitoring/spark-operator",
    )


def test_dry_run_before_the_mongo_stage_says_what_it_would_write() -> None:
    kube = RecordingKubeDouble(dry_run=True)
    ctx = SimpleNamespace(inv=inventories()["reference"], dry_run=True, kube=lambda: kube)
    out = monitoring.apply(ctx)
    assert any("would be written once the mongo stage created its monitor user" in c for c in out["changes"])
    assert kube.objects == {}  # a dry run stores nothing


def test_a_real_run_before_the_mongo_stage_is_a_user_error() -> None:
    kube = RecordingKubeDouble()
    ctx = SimpleNamespace(inv=inventories()["reference"], dry_run=False, kube=lambda: kube)
    with pytest.raises(UserError, match="run the mongo stage before monitoring"):
        monitoring.apply(ctx)
