"""Inventory validation: the reference cluster is valid; bad inventories get one exact sentence."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from datacloud.errors import InventoryError
from datacloud.inventory import allocatable, load_inventory, parse_inventory, parse_inventory_text, reserved_memory_mb

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())


def mut(f):
    d = copy.deepcopy(BASE)
    f(d)
    return d


BAD = [
    (
        "thesis_typo",
        lambda: mut(lambda d: d["nodes"][1].__setitem__("address", "196.168.1.2")),
        "nodes[1].address: 196.168.1.2 is outside the private subnet 192.168.1.0/24; fix the address or network.subnet.",
    ),
    (
        "dup_name",
        lambda: mut(lambda d: d["nodes"][2].__setitem__("name", "slave2")),
        "nodes[2].name: 'slave2' is already used by nodes[1]; node names must be unique.",
    ),
    (
        "dup_addr",
        lambda: mut(lambda d: d["nodes"][3].__setitem__("address", "192.168.1.2")),
        "nodes[3].address: 192.168.1.2 is already used by nodes[1]; node addresses must be unique.",
    ),
    (
        "upper",
        lambda: mut(lambda d: d["nodes"][1].__setitem__("name", "Slave2")),
        "nodes[1].name: 'Slave2' is not a DNS-1123 label (lowercase letters, digits and '-', at most 63); fix it.",
    ),
    (
        "pod_svc",
        lambda: mut(lambda d: d["cluster"].__setitem__("service_cidr", "10.244.128.0/17")),
        "cluster.service_cidr: 10.244.0.0/16 (cluster.pod_cidr) overlaps 10.244.128.0/17 (cluster.service_cidr); pick ranges that do not overlap.",
    ),
    (
        "svc_subnet",
        lambda: mut(lambda d: d["cluster"].__setitem__("service_cidr", "192.168.0.0/16")),
        "cluster.service_cidr: 192.168.0.0/16 (cluster.service_cidr) overlaps 192.168.1.0/24 (network.subnet); pick ranges that do not overlap.",
    ),
    (
        "two_cp",
        lambda: mut(lambda d: d["nodes"][1].__setitem__("roles", ["control-plane"])),
        "nodes: exactly one node must have the role control-plane, found 2; set roles: [control-plane] on one node.",
    ),
    (
        "no_cp",
        lambda: mut(lambda d: d["nodes"][0].__setitem__("roles", ["worker"])),
        "nodes: exactly one node must have the role control-plane, found 0; set roles: [control-plane] on one node.",
    ),
    (
        "mongo_rep",
        lambda: mut(lambda d: d["components"]["mongo"].__setitem__("replicas", 7)),
        "components.mongo.replicas: 7 replica set members need 7 schedulable nodes but the inventory has 5; lower it or add workers.",
    ),
    (
        "typo_field",
        lambda: mut(lambda d: d["nodes"][2].__setitem__("memroy_gb", 8)),
        "nodes[2].memroy_gb is not a known field; remove it or fix its spelling.",
    ),
    (
        "mem_str",
        lambda: mut(lambda d: d["nodes"][2].__setitem__("memory_gb", "eight")),
        "nodes[2].memory_gb must be a number, got 'eight'.",
    ),
    (
        "disk_use",
        lambda: mut(lambda d: d["nodes"][1]["disks"][1].__setitem__("use", "cephfs")),
        "nodes[1].disks[1].use must be one of 'ceph' or 'none', got 'cephfs'.",
    ),
    (
        "device_inject",
        lambda: mut(lambda d: d["nodes"][1]["disks"][1].__setitem__("device", "/dev/sdb; rm -rf /")),
        "nodes[1].disks[1].device: '/dev/sdb; rm -rf /' is not a device path like /dev/sdb; fix it.",
    ),
    (
        "gateway",
        lambda: mut(lambda d: d["network"].__setitem__("gateway", "router")),
        "network.gateway: 'router' is not the name of a node; name one of the nodes.",
    ),
    ("no_nodes", lambda: mut(lambda d: d.pop("nodes")), "nodes is missing; add it (see inventory.example.yaml)."),
    (
        "bcast",
        lambda: mut(lambda d: d["nodes"][4].__setitem__("address", "192.168.1.255")),
        "nodes[4].address: 192.168.1.255 is the network or broadcast address of 192.168.1.0/24; use a host address.",
    ),
    (
        "user",
        lambda: mut(lambda d: d["ssh"].__setitem__("user", "root$(id)")),
        "ssh.user: 'root$(id)' is not a Unix user name; fix it.",
    ),
    (
        "kver",
        lambda: mut(lambda d: d["cluster"].__setitem__("kubernetes_version", "latest")),
        "cluster.kubernetes_version: 'latest' is not a Kubernetes version like 1.34.2; fix it.",
    ),
    (
        "hostbits",
        lambda: mut(lambda d: d["network"].__setitem__("subnet", "192.168.1.1/24")),
        "network.subnet must be an IPv4 network in CIDR form like 192.168.1.0/24 (host bits zero), got '192.168.1.1/24'.",
    ),
    (
        "iface",
        lambda: mut(lambda d: d["network"].__setitem__("public_interface", "eth0`reboot`")),
        "network.public_interface: 'eth0`reboot`' is not a network interface name like eth0 or enp3s0; fix it.",
    ),
    (
        "label",
        lambda: mut(lambda d: d["nodes"][0].__setitem__("labels", {"zone": "a"})),
        "nodes[0].labels: node labels are not part of the inventory any more (no stage applied them to the nodes); remove them and label nodes with kubectl label node if you need labels.",
    ),
    (
        "kver_patch",
        lambda: mut(lambda d: d["cluster"].__setitem__("kubernetes_version", "1.34.99")),
        "cluster.kubernetes_version: 1.34.99 is not a Kubernetes release the platform knows (1.31.0-1.31.14, 1.32.0-1.32.10, 1.33.0-1.33.6, 1.34.0-1.34.2); fix it.",
    ),
    (
        "kver_minor",
        lambda: mut(lambda d: d["cluster"].__setitem__("kubernetes_version", "1.99.0")),
        "cluster.kubernetes_version: 1.99.0 is not a Kubernetes release the platform knows (1.31.0-1.31.14, 1.32.0-1.32.10, 1.33.0-1.33.6, 1.34.0-1.34.2); fix it.",
    ),
    (
        "loopback",
        lambda: mut(lambda d: d["nodes"][0].__setitem__("address", "127.0.0.2")),
        "nodes[0].address: 127.0.0.2 is a loopback address; use the node's address on the private network; fix it.",
    ),
    (
        "link_local",
        lambda: mut(lambda d: d["nodes"][0].__setitem__("address", "169.254.10.1")),
        "nodes[0].address: 169.254.10.1 is a link-local address; use the node's address on the private network; fix it.",
    ),
    (
        "pod_small",
        lambda: mut(lambda d: d["cluster"].__setitem__("pod_cidr", "10.244.0.0/23")),
        "cluster.pod_cidr: 10.244.0.0/23 is too small for 5 node(s), which get a /24 each; use a /21 or larger.",
    ),
    (
        "pod_large",
        lambda: mut(lambda d: d["cluster"].__setitem__("pod_cidr", "32.0.0.0/4")),
        "cluster.pod_cidr: 32.0.0.0/4 is too large (kube-controller-manager takes at most a /8 for /24 node ranges); use something like 10.244.0.0/16.",
    ),
    (
        "svc_small",
        lambda: mut(lambda d: d["cluster"].__setitem__("service_cidr", "10.96.0.0/28")),
        "cluster.service_cidr: 10.96.0.0/28 is too small; use a /12 to /24 like 10.96.0.0/12.",
    ),
    (
        "svc_large",
        lambda: mut(lambda d: d["cluster"].__setitem__("service_cidr", "10.96.0.0/11")),
        "cluster.service_cidr: 10.96.0.0/11 is too large (kube-apiserver takes at most a /12); use a /12 to /24 like 10.96.0.0/12.",
    ),
    (
        "device_dotdot",
        lambda: mut(lambda d: d["nodes"][1]["disks"][1].__setitem__("device", "/dev/sdb/../../etc/shadow")),
        "nodes[1].disks[1].device: '/dev/sdb/../../etc/shadow' climbs out of /dev with '.' or '..'; name the device like /dev/sdb; fix it.",
    ),
    (
        "host_key_md5",
        lambda: mut(lambda d: d["nodes"][1].__setitem__("ssh_host_key", "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48")),
        "nodes[1].ssh_host_key: 'MD5:16:27:ac:a5:76:28:...63:1b:56:4d:eb:df:a6:48' is not a SHA256 fingerprint like SHA256:<43 base64 characters>; fix it.",
    ),
    ("cpu_str", lambda: mut(lambda d: d["nodes"][2].__setitem__("cpu", "4")), "nodes[2].cpu must be a whole number, got '4'."),
    ("cpu_float", lambda: mut(lambda d: d["nodes"][2].__setitem__("cpu", 4.0)), "nodes[2].cpu must be a whole number, got 4.0."),
    (
        "mem_bool",
        lambda: mut(lambda d: d["nodes"][2].__setitem__("memory_gb", True)),
        "nodes[2].memory_gb must be a number, got True.",
    ),
    (
        "res_str",
        lambda: mut(lambda d: d["components"].setdefault("mongo", {}).__setitem__("shard", {"cpu_m": "300", "memory_mb": 768})),
        "components.mongo.shard.cpu_m must be a whole number, got '300'.",
    ),
    (
        "newline_key",
        lambda: mut(lambda d: d["nodes"][0].__setitem__("a\nb", 1)),
        "nodes[0]['a\\nb'] is not a known field; remove it or fix its spelling.",
    ),
]


def test_reference_inventory_is_valid() -> None:
    inv = load_inventory(ROOT / "inventory.example.yaml")
    assert [n.name for n in inv.nodes] == ["master", "slave2", "slave3", "slave4", "slave5"]
    assert inv.control_plane.name == "master"
    assert inv.storage_backend == "rook-ceph"
    assert [n.name for n in inv.ceph_nodes] == ["master", "slave2", "slave4", "slave5"]
    assert inv.mon_count == 3 and inv.ceph_replication == 3
    assert inv.gateway_node.name == "master"
    assert inv.warnings == []


@pytest.mark.parametrize(("case", "make", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_inventory_gets_one_exact_sentence(case: str, make, message: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(make())
    assert str(info.value) == message
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_all_problems_are_listed_one_sentence_each() -> None:
    d = mut(lambda d: (d["nodes"][1].__setitem__("cpu", "many"), d["nodes"][2].__setitem__("memory_gb", -1)))
    with pytest.raises(InventoryError) as info:
        parse_inventory(d)
    assert info.value.problems == [
        "nodes[1].cpu must be a whole number, got 'many'.",
        "nodes[2].memory_gb must be > 0, got -1.",
    ]


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(InventoryError, match=r"^inv.yaml is not valid YAML at line 1, column 9 .*; fix the syntax there.$"):
        parse_inventory_text("nodes: [", "inv.yaml")


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(InventoryError, match="must be a YAML mapping"):
        parse_inventory_text("- a\n- b\n", "inv.yaml")


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"does not exist; copy inventory.example.yaml to inventory.yaml"):
        load_inventory(tmp_path / "inventory.yaml")


def test_few_ceph_disks_fall_back_to_local_path_with_warning() -> None:
    d = mut(lambda d: [n.__setitem__("disks", []) for n in d["nodes"][2:]])
    inv = parse_inventory(d)
    assert inv.storage_backend == "local-path"
    assert inv.warnings and "falls back to the local-path provisioner" in inv.warnings[0]


def test_own_uplink_needs_no_gateway() -> None:
    d = mut(lambda d: d["network"].update(gateway=None, own_uplink=True))
    assert parse_inventory(d).gateway_node is None
    d = mut(lambda d: d["network"].update(gateway=None, own_uplink=False))
    with pytest.raises(InventoryError, match="network.gateway: no gateway node is named"):
        parse_inventory(d)


def test_allocatable_follows_the_tiered_reservation() -> None:
    inv = load_inventory(ROOT / "inventory.example.yaml")
    # 8 GiB: 25 % of 4096 + 20 % of 4096 + 100 MiB eviction = 1943 MiB reserved
    assert reserved_memory_mb(8192) == 1943
    assert allocatable(inv.node("slave3")) == (3920, 8192 - 1943)
    # 16 GiB adds 10 % of the next 8 GiB
    assert reserved_memory_mb(16384) == 1943 + 819
