"""Encryption at rest of Secrets (issue 12, item 8): what kubeadm and the API server are given,
and that the key is made once. The API server really encrypting is proved on the lab
(tests/lab/test_provision_lab.py::test_first_run_makes_a_real_cluster reads etcd).

Stands in: ``NodeFileDouble`` for the control plane's file (its ``cat``), and a dict for
the Airflow connection ``datacloud_kube_encryption``.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
import yaml

from datacloud import config, connections
from datacloud.errors import UserError
from datacloud.inventory import load_inventory
from datacloud.remote import Result
from datacloud.stages import kubernetes as k8s


def _inv():
    return load_inventory(config.REPO_ROOT / "inventory.example.yaml")


def test_kubeadm_hands_the_api_server_the_encryption_configuration() -> None:
    cluster = list(yaml.safe_load_all(k8s.kubeadm_config(_inv())))[1]
    api = cluster["apiServer"]
    args = {a["name"]: a["value"] for a in api["extraArgs"]}
    assert args["encryption-provider-config"] == k8s.ENCRYPTION_CONFIG == "/etc/kubernetes/encryption/config.yaml"
    assert args["encryption-provider-config-automatic-reload"] == "true"  # a rotation needs no restart
    (volume,) = api["extraVolumes"]
    assert volume == {
        "name": "datacloud-encryption",
        "hostPath": "/etc/kubernetes/encryption",
        "mountPath": "/etc/kubernetes/encryption",
        "readOnly": True,
        "pathType": "DirectoryOrCreate",
    }


def test_the_configuration_encrypts_secrets_with_the_first_key_and_reads_plain_ones() -> None:
    new, old = k8s.new_encryption_key(), {"name": "key-20250101t000000z", "secret": base64.b64encode(b"x" * 32).decode()}
    doc = yaml.safe_load(k8s.encryption_config([new, old]))
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1" and doc["kind"] == "EncryptionConfiguration"
    (resource,) = doc["resources"]
    assert resource["resources"] == ["secrets"]
    first, last = resource["providers"]
    assert first == {"secretbox": {"keys": [new, old]}}  # new writes, both read
    assert last == {"identity": {}}  # Secrets stored before encryption was on stay readable
    assert len(base64.b64decode(new["secret"])) == 32
    assert k8s.parse_encryption_config(k8s.encryption_config([new, old])) == [new, old]


def test_a_malformed_stored_key_is_one_sentence() -> None:
    with pytest.raises(UserError) as err:
        k8s.encryption_config([{"name": "key-1", "secret": "short"}])
    assert str(err.value).count(". ") == 0 and "datacloud_kube_encryption" in str(err.value)


class NodeFileDouble:
    """The control plane's /etc/kubernetes/encryption/config.yaml as ``cat`` reads it."""

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.quiet: list[bool] = []

    def run(self, argv, *, check=True, quiet=False, what=None):
        assert argv == ["cat", k8s.ENCRYPTION_CONFIG]
        self.quiet.append(quiet)
        return Result(rc=0, stdout=self.text, stderr="") if self.text is not None else Result(rc=1, stdout="", stderr="")


@pytest.fixture
def store(monkeypatch):
    conns: dict[str, list] = {}
    masked: list[str] = []
    monkeypatch.setattr(k8s, "stored_encryption_keys", lambda: conns.get("keys"))
    monkeypatch.setattr(k8s, "store_encryption_keys", lambda keys, cluster: conns.__setitem__("keys", [dict(k) for k in keys]))
    monkeypatch.setattr(connections, "mask", masked.append)
    return SimpleNamespace(conns=conns, masked=masked)


def _ctx(dry_run=False):
    return SimpleNamespace(inv=_inv(), dry_run=dry_run)


def test_the_key_is_made_once_stored_first_and_never_regenerated(store) -> None:
    node = NodeFileDouble(None)
    keys, changes = k8s.encryption_keys(_ctx(), node)
    assert store.conns["keys"] == keys and len(keys) == 1
    assert changes == [f"store the encryption key(s) {keys[0]['name']} as the Airflow connection datacloud_kube_encryption"]
    assert keys[0]["secret"] in store.masked
    assert node.quiet == [True]  # the file's content never reaches the log
    # the node has the file now: a re-run keeps its key and changes nothing
    node.text = k8s.encryption_config(keys)
    again, changes = k8s.encryption_keys(_ctx(), node)
    assert again == keys and changes == []
    # a rebuilt control plane (no file) gets the stored key back, not a new one
    node.text = None
    assert k8s.encryption_keys(_ctx(), node) == (keys, [])


def test_the_node_wins_over_a_lost_or_stale_connection(store) -> None:
    on_node = [k8s.new_encryption_key()]
    node = NodeFileDouble(k8s.encryption_config(on_node))
    keys, changes = k8s.encryption_keys(_ctx(), node)
    assert keys == on_node == store.conns["keys"] and len(changes) == 1


def test_a_dry_run_stores_nothing(store) -> None:
    _, changes = k8s.encryption_keys(_ctx(dry_run=True), NodeFileDouble(None))
    assert "keys" not in store.conns
    assert changes[0].startswith("would store the encryption key(s) ")
