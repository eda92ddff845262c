"""Item 7 of issue 12: the JupyterHub admin's name cannot be claimed by a sign-up.

Sign-up stays closed until the admin step has created the admin's account; an
account with another password fails the step; rotation through an annotation;
every password goes through Airflow's mask_secret.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from datacloud.errors import UserError
from datacloud.remote import Result
from datacloud.stages import jupyter
from tests.unit.apps_fixtures import inventories
from tests.unit.kube_double import RecordingKubeDouble

SECRET = f"Secret/jupyter/{jupyter.ADMIN_SECRET}"


class HubKube(RecordingKubeDouble):
    """Also records what the admin step sends the hub on stdin, and applies `kubectl annotate ... key-`."""

    def __init__(self, *words: str) -> None:
        super().__init__()
        self.words = list(words)
        self.specs: list[dict] = []

    def kubectl(self, *args: str, stdin: str | None = None, **kw) -> Result:
        if args[:2] == ("exec", "-i"):
            self.calls.append(("kubectl", "exec"))
            self.specs.append(json.loads(stdin or "{}"))
            return Result(0, self.words.pop(0) + "\n", "")
        if args[:2] == ("annotate", "secret") and args[-1].endswith("-"):
            obj = self.objects[f"Secret/{args[4]}/{args[2]}"]
            obj["metadata"].get("annotations", {}).pop(args[-1][:-1], None)
        return super().kubectl(*args, stdin=stdin, **kw)


def _ctx(kube: RecordingKubeDouble) -> SimpleNamespace:
    return SimpleNamespace(inv=inventories()["reference"], dry_run=kube.dry_run, kube=lambda: kube)


def _signup(kube: RecordingKubeDouble) -> bool:
    values = json.loads(kube.releases["jupyterhub"][2])
    return values["hub"]["config"]["NativeAuthenticator"]["enable_signup"]


def test_rendered_hub_has_signup_closed() -> None:
    values = jupyter.render(inventories()["reference"]).releases[0].values
    assert values["hub"]["config"]["NativeAuthenticator"]["enable_signup"] is False


def test_signup_opens_only_after_the_admin_account_exists() -> None:
    kube = HubKube("created", "exists")
    jupyter.apply(_ctx(kube))
    assert _signup(kube) is False  # the hub goes live closed
    out = jupyter.ensure_admin(_ctx(kube))
    assert _signup(kube) is True
    exec_at = kube.calls.index(("kubectl", "exec"))
    opened_at = max(i for i, c in enumerate(kube.calls) if c[0] == "helm")
    assert exec_at < opened_at  # the account exists before anyone can sign up
    assert any("sign-up opened" in c for c in out["changes"])
    assert kube.objects[SECRET]["metadata"]["annotations"][jupyter.ADMIN_CONFIRMED] == "true"
    # a re-run renders the hub open and changes nothing
    assert jupyter.apply(_ctx(kube))["changes"] == []
    assert jupyter.ensure_admin(_ctx(kube))["changes"] == []
    assert _signup(kube) is True


def test_an_admin_account_with_another_password_fails_and_signup_stays_closed() -> None:
    kube = HubKube("exists-other-password")
    jupyter.apply(_ctx(kube))
    with pytest.raises(UserError, match="exists with a password that is not the one in Secret jupyter/jupyterhub-admin"):
        jupyter.ensure_admin(_ctx(kube))
    assert _signup(kube) is False
    assert jupyter.ADMIN_CONFIRMED not in (kube.objects[SECRET]["metadata"].get("annotations") or {})


def test_rotation_gives_the_account_and_the_secret_a_new_password() -> None:
    kube = HubKube("created", "rotated", "exists")
    jupyter.apply(_ctx(kube))
    jupyter.ensure_admin(_ctx(kube))
    old = kube.objects[SECRET]["stringData"]["password"]
    kube.objects[SECRET]["metadata"]["annotations"]["datacloud/rotate"] = "true"  # kubectl annotate ... datacloud/rotate=true
    out = jupyter.ensure_admin(_ctx(kube))
    new = kube.objects[SECRET]["stringData"]["password"]
    assert new != old and len(new) >= 32
    assert kube.specs[-1] == {"db_url": jupyter.HUB_DB_URL, "username": jupyter.ADMIN_USER, "password": new, "rotate": True}
    assert kube.objects[SECRET]["metadata"]["annotations"] == {jupyter.ADMIN_CONFIRMED: "true"}
    assert any("rotated" in c for c in out["changes"]) and new not in json.dumps(out)
    assert jupyter.ensure_admin(_ctx(kube))["changes"] == []
    assert kube.specs[-1]["rotate"] is False and kube.specs[-1]["password"] == new


def test_a_rotate_annotation_other_than_true_is_refused() -> None:
    kube = HubKube("created")
    jupyter.ensure_admin(_ctx(kube))
    kube.objects[SECRET]["metadata"]["annotations"]["datacloud/rotate"] = "yes"
    with pytest.raises(UserError, match="set it to true"):
        jupyter.ensure_admin(_ctx(kube))


def test_every_admin_password_goes_through_mask_secret(monkeypatch, caplog) -> None:
    masked: list[str] = []
    monkeypatch.setattr("airflow.sdk.log.mask_secret", masked.append)
    kube = HubKube("created", "rotated", "exists")
    with caplog.at_level(logging.DEBUG):
        jupyter.ensure_admin(_ctx(kube))  # generated
        first = kube.objects[SECRET]["stringData"]["password"]
        kube.objects[SECRET]["metadata"]["annotations"]["datacloud/rotate"] = "true"
        jupyter.ensure_admin(_ctx(kube))  # read, then rotated
        second = kube.objects[SECRET]["stringData"]["password"]
        jupyter.ensure_admin(_ctx(kube))  # read
    assert first in masked and second in masked
    assert first not in caplog.text and second not in caplog.text
