"""platform_teardown forgets the recorded platform state once every node is clean (issue 12, item 11)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from datacloud import connections
from datacloud import platform_state as ps
from datacloud.errors import TransientError
from datacloud.inventory import load_inventory
from datacloud.stages import teardown

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("DATACLOUD_PLATFORM_STATE", str(tmp_path / "platform" / "state.json"))
    monkeypatch.setattr(connections, "delete", lambda conn_id: True)
    ps.record_stage("spark", services={"spark_history": "http://192.168.1.1:31080"})
    ps.record_stage("mongo", facts={"shards": 2})
    return SimpleNamespace(inv=load_inventory(ROOT / "inventory.example.yaml"), dry_run=False)


def test_a_clean_teardown_forgets_the_recorded_state(recorded) -> None:
    result = teardown.verify(recorded, [{"node": "n1", "left": ""}])
    state = ps.load_state()
    assert not state.any_provisioned
    assert state.links() == []
    assert "forget the recorded platform state (mongo, spark)" in result["changes"]


def test_a_node_left_unclean_keeps_the_state(recorded) -> None:
    with pytest.raises(TransientError):
        teardown.verify(recorded, [{"node": "n1", "left": "/etc/kubernetes/admin.conf"}])
    assert ps.load_state().provisioned("spark")


def test_a_dry_run_forgets_nothing(recorded) -> None:
    recorded.dry_run = True
    teardown.verify(recorded, [])
    assert ps.load_state().provisioned("mongo")
