"""The inventory loader cannot be made to hang, exhaust memory or read outside the inventory
folders: each hostile file or path gets one short sentence, quickly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from datacloud import config, inventory
from datacloud.errors import InventoryError
from datacloud.inventory import load_inventory, parse_inventory, parse_inventory_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "inventory.example.yaml").read_text()


def _one_sentence(err: pytest.ExceptionInfo, limit: int = 320) -> str:
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
    assert len(message) <= limit, f"{len(message)} characters: {message[:200]}"
    return message


def _quickly(fn, *args, seconds: float = 5.0):
    t0 = time.monotonic()
    with pytest.raises(InventoryError) as err:
        fn(*args)
    assert time.monotonic() - t0 < seconds
    return err


# --- what the path may be -------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "inventory.yaml"
    os.mkfifo(fifo)
    err = _quickly(load_inventory, fifo)  # no writer: an open() for reading would block forever
    assert _one_sentence(err) == f"inventory file {fifo} is a FIFO, not a regular file; point it at a YAML file."


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "character device"), ("/dev/null", "character device")])
def test_a_device_is_refused(path: str, kind: str) -> None:
    err = _quickly(load_inventory, path)
    assert _one_sentence(err) == f"inventory file {path} is a {kind}, not a regular file; point it at a YAML file."


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "is a directory, not a regular file" in _one_sentence(_quickly(load_inventory, tmp_path))


def test_a_file_of_tens_of_megabytes_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "inventory.yaml"
    with big.open("wb") as f:
        f.truncate(40 << 20)  # 40 MB (sparse)
    err = _quickly(load_inventory, big, seconds=2)
    assert _one_sentence(err) == (
        f"inventory file {big} is larger than 1024 KiB, far more than an inventory needs; point it at the inventory YAML."
    )


def test_inventories_live_in_the_inventory_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.INVENTORY_DIRS_ENV, raising=False)
    outside = tmp_path / "inventory.yaml"
    outside.write_text(EXAMPLE)
    with pytest.raises(InventoryError) as err:
        config.resolve_inventory_path(str(outside))
    message = _one_sentence(err, limit=400)
    assert message.startswith(f"inventory path {outside} is outside the inventory folders ({ROOT}, ")
    assert message.endswith("; move it into the project folder or add its folder to DATACLOUD_INVENTORY_DIRS.")
    # an administrator lists the folder
    monkeypatch.setenv(config.INVENTORY_DIRS_ENV, str(tmp_path))
    assert config.resolve_inventory_path(str(outside)) == outside.resolve()
    # the project folder and the default
    assert config.resolve_inventory_path("inventory.example.yaml") == ROOT / "inventory.example.yaml"
    assert config.resolve_inventory_path(None) == config.default_inventory()


def test_a_symlink_out_of_the_folders_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, elsewhere = tmp_path / "inventories", tmp_path / "elsewhere"
    allowed.mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret.yaml").write_text("nodes: []\n")
    (allowed / "inventory.yaml").symlink_to(elsewhere / "secret.yaml")
    monkeypatch.setenv(config.INVENTORY_DIRS_ENV, str(allowed))
    with pytest.raises(InventoryError, match=r"is outside the inventory folders"):
        config.resolve_inventory_path(str(allowed / "inventory.yaml"))
    with pytest.raises(InventoryError, match=r"is outside the inventory folders"):
        config.resolve_inventory_path(str(allowed / ".." / "elsewhere" / "secret.yaml"))


@pytest.mark.parametrize("value", ["/dev/zero", "/etc/passwd", "/proc/self/environ", ".data/airflow/airflow.cfg", "/dev/stdin"])
def test_only_yaml_files_are_inventories(value: str) -> None:
    with pytest.raises(InventoryError) as err:
        config.resolve_inventory_path(value)
    assert _one_sentence(err) == (
        f"inventory path {value} does not end in .yaml or .yml; name the inventory like inventory.yaml."
    )


def test_the_report_and_health_dags_go_through_the_same_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """inventory_report and platform_health take the path from a trigger form."""
    from datacloud import reports
    from datacloud.health import HealthContext
    from datacloud.platform_state import PlatformState

    monkeypatch.delenv(config.INVENTORY_DIRS_ENV, raising=False)
    for path in ("/dev/zero", "/tmp/x.yaml"):
        with pytest.raises(InventoryError):
            reports.inventory_report(path)
        with pytest.raises(InventoryError):
            HealthContext(state=PlatformState({}), inventory_path=path).inventory()


# --- what the YAML may be -------------------------------------------------------------

BILLION_LAUGHS = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    + ["nodes: *i"]
)


def test_an_alias_bomb_is_refused_quickly() -> None:
    assert len(BILLION_LAUGHS) < 1000  # 10**9 values once expanded
    err = _quickly(parse_inventory_text, BILLION_LAUGHS, "inv.yaml", seconds=3)
    assert _one_sentence(err) == "inv.yaml expands to more than 50000 values (YAML aliases?); write the inventory out plainly."


def test_an_error_quotes_only_an_excerpt_of_a_large_value() -> None:
    data = yaml.safe_load(EXAMPLE)
    shared = ["x" * 1000] * 40
    data["ssh"]["user"] = {"k": [shared] * 40}  # about 1.6 MB of repr, one sentence of excerpt
    err = _quickly(parse_inventory, data, seconds=2)
    assert _one_sentence(err).startswith("ssh.user must be a string, got {'k': [[")
    data = yaml.safe_load(EXAMPLE)
    data["network"]["gateway"] = "g" * 100_000
    assert len(_one_sentence(_quickly(parse_inventory, data))) < 200


@pytest.mark.parametrize(
    "text",
    [
        "nodes: " + "[" * 20_000 + "]" * 20_000,  # the YAML parser's own recursion
        "nodes:\n" + "".join(f"{'  ' * i}- \n" for i in range(1, 40)),
        "cluster:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, 40)) + "  " * 40 + "v: 1\n",
    ],
    ids=["flow", "block-lists", "block-maps"],
)
def test_deep_nesting_is_one_sentence(text: str) -> None:
    err = _quickly(parse_inventory_text, text, "inv.yaml")
    assert _one_sentence(err) == "inv.yaml is nested too deeply; keep to the layout of inventory.example.yaml."


def test_a_key_given_twice_is_refused() -> None:
    text = EXAMPLE.replace("cluster:\n", "cluster:\n  name: first\n", 1)
    assert text != EXAMPLE
    with pytest.raises(InventoryError) as err:
        parse_inventory_text(text, "inv.yaml")
    message = _one_sentence(err)
    assert message.startswith("inv.yaml is not valid at line ")
    assert "key 'name' appears twice in one mapping (also line " in message and message.endswith("; keep one of them.")
    # merge keys are not duplicates
    merged = "defaults: &d {cpu: 2, memory_gb: 4}\n" + EXAMPLE
    with pytest.raises(InventoryError, match=r"defaults is not a known field"):
        parse_inventory_text(merged, "inv.yaml")


def test_the_airflow_host_is_not_a_node(monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(EXAMPLE)
    address = data["nodes"][1]["address"]
    monkeypatch.setattr(inventory, "local_addresses", lambda: frozenset({inventory.ipaddress.IPv4Address(address)}))
    with pytest.raises(InventoryError) as err:
        parse_inventory(data)
    assert _one_sentence(err) == (
        f"nodes[1].address: {address} is an address of this Airflow host itself; "
        "list the cluster's machines, not the admin host; fix it."
    )


def test_local_addresses_come_from_the_kernel() -> None:
    assert inventory.ipaddress.IPv4Address("127.0.0.1") in inventory.local_addresses()


def test_the_pinned_kubernetes_version_is_a_known_release() -> None:
    from datacloud.render import versions

    pinned = versions()["kubernetes"]["version"]
    assert inventory.kubernetes_release_exists(pinned)
    assert not inventory.kubernetes_release_exists("1.30.99")
    assert parse_inventory(yaml.safe_load(EXAMPLE)).cluster.kubernetes_version == pinned
