"""The kubernetes_version Param of provision_platform overrides the inventory's version
without the inventory's validation: every task checks it against the known releases."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from datacloud.stages._dag import _selected


@pytest.mark.parametrize("version", ["1.34.99", "1.99.0", "1.30.0"])
def test_a_version_that_does_not_exist_fails_every_task(version: str) -> None:
    with pytest.raises(AirflowFailException) as err:
        _selected("preflight", {"inventory": "inventory.example.yaml", "kubernetes_version": version})
    message = str(err.value)
    assert message.startswith(f"Param kubernetes_version {version} is not a Kubernetes release the platform knows (up to ")
    assert "\n" not in message and message.endswith("; leave it empty for the inventory's.")


@pytest.mark.parametrize("version", ["", None, "1.33.4", "1.34.2"])
def test_a_known_version_or_none_passes(version: str | None) -> None:
    params = {"inventory": "inventory.example.yaml", "kubernetes_version": version, "stages": ["preflight"]}
    _selected("preflight", params)
    with pytest.raises(AirflowSkipException):
        _selected("mongo", params)
