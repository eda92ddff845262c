"""MongoDB in flight (issue 12, item 8): members talk TLS with the operator's certificates, and
mongos is never exposed on a NodePort while its clients do not speak TLS.

Stands in: ``KubeDoubleState`` (tests/helpers/kube_double.py) records what the mongo stage
would apply; the real API server accepts the rendered cluster object
(tests/apiserver/test_mongo_tls.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from datacloud.errors import UserError
from datacloud.stages import STAGES, mongo, preflight
from tests.helpers import datalayer_inventories as inventories
from tests.helpers.kube_double import KubeDoubleState, StageContextDouble

SENTENCE = (
    "components.mongo.node_port 32017 would expose mongos on every node's address without TLS (its clients do not "
    "speak TLS yet); remove it and reach MongoDB through ./dev tunnels (an SSH forward)."
)


def _cluster(inv):
    (psmdb,) = [o for o in mongo.render(inv).objects["cluster"] if o["kind"] == "PerconaServerMongoDB"]
    return psmdb


def test_members_talk_tls_with_the_operators_certificates() -> None:
    spec = _cluster(inventories.reference())["spec"]
    assert spec["tls"] == {"mode": "preferTLS"}  # no issuerConf: the operator makes its own CA and certificates
    assert not spec["unsafeFlags"].get("tls")


def _preflight(inv, stages, monkeypatch):
    monkeypatch.setattr(preflight, "problems", lambda inv, facts: [])
    monkeypatch.setattr(preflight, "table", lambda inv, facts: "")
    monkeypatch.setattr(preflight, "check_versions", lambda: None)
    monkeypatch.setattr(preflight, "image_problems", lambda inv, stages: [])
    ctx = SimpleNamespace(inv=inv, dry_run=False, params=SimpleNamespace(stages=stages))
    return preflight.check(ctx, [])


def test_preflight_refuses_mongos_on_a_node_port_in_one_sentence(monkeypatch) -> None:
    inv = inventories.with_mongo(node_port=32017)
    with pytest.raises(preflight.PreflightError) as err:
        _preflight(inv, STAGES, monkeypatch)
    assert str(err.value) == SENTENCE
    # a run without the mongo stage exposes nothing
    assert _preflight(inv, ("preflight", "kubernetes"), monkeypatch)["changes"] == []
    assert _preflight(inventories.reference(), STAGES, monkeypatch)["changes"] == []


def test_the_mongo_stage_refuses_it_too_and_applies_nothing() -> None:
    """Also when preflight is not selected in the run."""
    ctx = StageContextDouble(inventories.with_mongo(node_port=32017), KubeDoubleState())
    with pytest.raises(UserError) as err:
        mongo.step_apply(ctx)
    assert str(err.value) == SENTENCE
    assert ctx.state.objects == {}
