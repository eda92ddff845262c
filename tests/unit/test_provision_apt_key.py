"""The apt signing key is checked against a pinned fingerprint before anything is installed
(issue 12, item 11). Keys are made by the real gpg; the fingerprints we compute must be gpg's.

Stands in: ``FetchDouble`` for the node fetching the key (its ``sh -c`` answer); the lab
fetches for real (tests/lab/test_provision_lab.py::test_a_wrong_apt_key_pin_installs_nothing).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from datacloud import config
from datacloud.inventory import load_inventory, parse_inventory
from datacloud.remote import Result
from datacloud.stages import node_prep

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg to make real keys")


def _gpg(home: Path, *args: str) -> str:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


def _key(tmp_path: Path, name: str, algo: str = "ed25519") -> tuple[bytes, str]:
    home = tmp_path / name
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.invalid>", algo, "sign", "never")
    fpr = next(ln.split(":")[9] for ln in _gpg(home, "--with-colons", "--list-keys").splitlines() if ln.startswith("fpr:"))
    armored = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--armor", "--export"], check=True, capture_output=True
    ).stdout
    return armored, fpr


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpg")
    return {"a": _key(tmp, "a"), "b": _key(tmp, "b", "rsa2048")}


def test_our_fingerprints_are_gpgs(keys) -> None:
    for armored, fpr in keys.values():
        assert node_prep.key_fingerprints(armored) == [fpr]
        assert node_prep.key_fingerprints(node_prep._dearmor(armored)) == [fpr]  # binary, as apt reads it


class FetchDouble:
    """The node's answer to the key fetch: base64 of the file it downloaded."""

    label = "n2 (192.168.1.2)"

    def __init__(self, data: bytes, rc: int = 0) -> None:
        self.data, self.rc, self.calls = data, rc, []

    def run(self, argv, *, check=True, quiet=False, what=None):
        self.calls.append((argv, quiet))
        return Result(rc=self.rc, stdout=base64.b64encode(self.data).decode(), stderr="curl: (7) refused" if self.rc else "")


def test_the_pinned_key_is_passed_on_as_its_packets(keys) -> None:
    armored, fpr = keys["a"]
    node = FetchDouble(armored)
    got = node_prep.verified_key(node, "http://10.0.0.1/key.asc", fpr, "Kubernetes packages' repository")
    assert base64.b64decode(got) == node_prep._dearmor(armored)
    ((argv, quiet),) = node.calls
    assert argv[-1] == "http://10.0.0.1/key.asc" and quiet


def test_another_key_is_refused_in_one_sentence(keys) -> None:
    (armored, fpr), (_, other) = keys["a"], keys["b"]
    with pytest.raises(node_prep.AptKeyError) as err:
        node_prep.verified_key(FetchDouble(armored), "http://10.0.0.1/key.asc", other, "Kubernetes packages' repository")
    assert str(err.value) == (
        f"n2 (192.168.1.2): the Kubernetes packages' repository key at http://10.0.0.1/key.asc is {fpr}, not the pinned "
        f"{other}; nothing was installed (check the repository, or correct the pin if its key really changed)."
    )


def test_the_pinned_key_with_another_one_beside_it_is_refused(keys) -> None:
    """A key file may hold several keys; apt would trust every one of them."""
    (a, fpr), (b, _) = keys["a"], keys["b"]
    both = node_prep._dearmor(a) + node_prep._dearmor(b)
    with pytest.raises(node_prep.AptKeyError):
        node_prep.verified_key(FetchDouble(both), "http://10.0.0.1/key.asc", fpr, "repository")


def test_garbage_and_an_html_page_are_no_key(keys) -> None:
    for data in (b"<html>404</html>", b"", b"\xff\x00garbage"):
        with pytest.raises(node_prep.AptKeyError, match="is no OpenPGP key, not the pinned"):
            node_prep.verified_key(FetchDouble(data), "http://10.0.0.1/key.asc", keys["a"][1], "repository")


def test_a_failed_fetch_is_transient(keys) -> None:
    from datacloud.errors import TransientError

    with pytest.raises(TransientError):
        node_prep.verified_key(FetchDouble(b"", rc=7), "http://10.0.0.1/key.asc", keys["a"][1], "repository")


def test_the_pins_come_from_versions_and_the_inventory() -> None:
    inv = load_inventory(config.REPO_ROOT / "inventory.example.yaml")
    url, pin = node_prep.apt_key(inv)
    assert url.endswith("/deb/Release.key") and pin == "DE15B14486CD377B9E876E1A234654DA9A296436"
    data = inv.model_dump(mode="json")
    data["packages"] = {"repository": "http://10.0.0.1:8000", "suite": "./", "apt_key_url": "http://10.0.0.1:8000/key.asc",
                        "apt_key_fingerprint": "de15 b144 86cd 377b 9e87 6e1a 2346 54da 9a29 6436"}  # fmt: skip
    private = parse_inventory(data)
    assert node_prep.apt_key(private) == ("http://10.0.0.1:8000/key.asc", "DE15B14486CD377B9E876E1A234654DA9A296436")
    assert (
        node_prep.private_source(private) == "deb [signed-by=/etc/apt/keyrings/datacloud-kubernetes.gpg] http://10.0.0.1:8000 ./"
    )
