"""MongoDB Secrets survive re-runs, upgrades and relabels; only an annotated Secret is rotated.

Driven through the recording Kube double: the Secrets live in its state, the way
the API server keeps them between runs of the mongo stage.
"""

from __future__ import annotations

import logging

import pytest

from datacloud import connections
from datacloud.errors import UserError
from datacloud.stages import mongo
from tests.helpers import datalayer_inventories as inventories
from tests.helpers.kube_double import KubeDoubleState, StageContextDouble

APP = f"Secret/mongo/{mongo.CLUSTER}-app"
KEYFILE = f"Secret/mongo/{mongo.KEYFILE_SECRET}"


def _ctx(state: KubeDoubleState | None = None, dry_run: bool = False) -> StageContextDouble:
    return StageContextDouble(inventories.reference(), state or KubeDoubleState(), dry_run)


def _secrets(ctx: StageContextDouble) -> dict[str, dict[str, str]]:
    return {k: dict(v["stringData"]) for k, v in ctx.state.objects.items() if k.startswith("Secret/")}


def _annotate(ctx: StageContextDouble, oid: str, value: str = "true") -> None:
    ctx.state.objects[oid]["metadata"]["annotations"] = {mongo.ROTATE_ANNOTATION: value}


def test_a_relabelled_namespace_regenerates_no_secret():
    ctx = _ctx()
    mongo.step_apply(ctx)
    before = _secrets(ctx)
    ctx.state.objects["Namespace/mongo"]["metadata"]["labels"]["team"] = "data"  # someone relabelled it
    result = mongo.step_apply(ctx)
    assert result["changes"] == ["Namespace/mongo"]
    assert _secrets(ctx) == before, "a changed Namespace must never regenerate passwords or the keyFile"


def test_an_upgrade_regenerates_no_secret():
    ctx = _ctx()
    mongo.step_apply(ctx)
    before = _secrets(ctx)
    chart, _, values = ctx.state.releases["psmdb-operator"]
    ctx.state.releases["psmdb-operator"] = (chart, "1.21.0", values)  # an older release installed
    result = mongo.step_apply(ctx)
    assert [c for c in result["changes"] if c.startswith("helm release psmdb-operator ")]
    assert _secrets(ctx) == before


def test_a_lacking_key_is_added_and_nothing_else_changes():
    ctx = _ctx()
    mongo.step_apply(ctx)
    before = _secrets(ctx)
    users = f"Secret/mongo/{mongo.USERS_SECRET}"
    del ctx.state.objects[users]["stringData"]["MONGODB_BACKUP_PASSWORD"]  # e.g. a user new in an upgrade
    (change,) = mongo.step_apply(ctx)["changes"]
    assert change == f"{users} completed with generated values for MONGODB_BACKUP_PASSWORD"
    after = _secrets(ctx)
    assert after[users]["MONGODB_BACKUP_PASSWORD"] != before[users]["MONGODB_BACKUP_PASSWORD"]
    assert {k: v for k, v in after[users].items() if k != "MONGODB_BACKUP_PASSWORD"} == {
        k: v for k, v in before[users].items() if k != "MONGODB_BACKUP_PASSWORD"
    }
    assert {k: v for k, v in after.items() if k != users} == {k: v for k, v in before.items() if k != users}


def test_an_annotated_password_is_rotated_and_the_connection_follows(monkeypatch):
    ctx = _ctx()
    mongo.step_apply(ctx)
    store: dict[str, dict] = {}
    monkeypatch.setattr(connections, "get", store.get)
    monkeypatch.setattr(connections, "write_connection", lambda conn_id, fields: store.__setitem__(conn_id, dict(fields)))
    mongo.step_connection(ctx)
    before = _secrets(ctx)
    old_password = before[APP]["password"]
    assert store["datacloud_mongo"]["password"] == old_password

    _annotate(ctx, APP)
    ctx.state.calls.clear()
    result = mongo.step_apply(ctx)
    assert result["changes"] == [f"{APP} rotated (new password(s), as annotated datacloud/rotate)"]
    after = _secrets(ctx)
    assert after[APP]["password"] != old_password
    assert len(after[APP]["password"]) == 32
    assert {k: v for k, v in after.items() if k != APP} == {k: v for k, v in before.items() if k != APP}
    # the annotation is removed, so the next run does not rotate again
    assert (
        "kubectl",
        "annotate",
        "secret",
        f"{mongo.CLUSTER}-app",
        "--namespace",
        "mongo",
        "datacloud/rotate-",
    ) in ctx.state.calls
    assert mongo.step_apply(ctx)["changes"] == []

    assert mongo.step_connection(ctx)["changes"] == ["connection datacloud_mongo stored"]
    assert store["datacloud_mongo"]["password"] == after[APP]["password"]


def test_rotating_the_system_users_keeps_their_names():
    ctx = _ctx()
    mongo.step_apply(ctx)
    users = f"Secret/mongo/{mongo.USERS_SECRET}"
    before = _secrets(ctx)[users]
    _annotate(ctx, users)
    mongo.step_apply(ctx)
    after = _secrets(ctx)[users]
    assert set(after) == set(before)
    for key in before:
        assert (after[key] == before[key]) == key.endswith("_USER"), key


def test_the_keyfile_is_never_rotated():
    ctx = _ctx()
    mongo.step_apply(ctx)
    before = _secrets(ctx)
    _annotate(ctx, KEYFILE)
    with pytest.raises(UserError) as err:
        mongo.step_apply(ctx)
    message = str(err.value)
    assert "the keyFile of a running cluster is never rotated" in message
    assert (
        "\n" not in message and "kubectl annotate secret --namespace mongo datacloud-mongo-keyfile datacloud/rotate-" in message
    )
    assert _secrets(ctx) == before


def test_an_annotation_other_than_true_is_refused():
    ctx = _ctx()
    mongo.step_apply(ctx)
    _annotate(ctx, APP, "yes please" * 20)
    with pytest.raises(UserError, match=r"has annotation datacloud/rotate='yes pleaseyes please.*\.\.\.; set it to true"):
        mongo.step_apply(ctx)


def test_a_dry_run_names_the_rotation_and_changes_nothing():
    state = KubeDoubleState()
    mongo.step_apply(_ctx(state))
    ctx = _ctx(state, dry_run=True)
    _annotate(ctx, APP)
    before = _secrets(ctx)
    result = mongo.step_apply(ctx)
    assert f"{APP} would be rotated (new password(s), as annotated datacloud/rotate)" in result["changes"]
    assert _secrets(ctx) == before
    assert not [c for c in state.calls if c[:2] == ("kubectl", "annotate")]


def test_every_value_is_masked_and_none_is_logged(monkeypatch, caplog):
    masked: list[str] = []
    monkeypatch.setattr(connections, "mask", masked.append)
    ctx = _ctx()
    with caplog.at_level(logging.DEBUG):
        mongo.step_apply(ctx)
        _annotate(ctx, APP)
        result = mongo.step_apply(ctx)
    values = [v for s in _secrets(ctx).values() for k, v in s.items() if not k.endswith("_USER")]
    assert values and set(values) <= set(masked)
    assert not set(mongo.SYSTEM_USERS.values()) & set(masked), "user names are not secret; masking them redacts common words"
    text = caplog.text + repr(result)
    assert not [v for v in values if v in text]
