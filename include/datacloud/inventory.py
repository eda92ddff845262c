"""The inventory: one YAML file that describes the machines and the platform.

``load_inventory(path)`` returns a validated :class:`Inventory` or raises
:class:`~datacloud.errors.InventoryError` whose message is one sentence naming
the field path and what to change. Every string that may later reach a shell
on a node is constrained here to a safe alphabet, so the stages can quote
values without ever having to trust them.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import math
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from datacloud.errors import InventoryError

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DEVICE = re.compile(r"^/dev/[a-zA-Z0-9][a-zA-Z0-9/_.-]{0,62}$")
INTERFACE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$")
UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
K8S_VERSION = re.compile(r"^1\.(\d{2})\.(\d{1,3})$")
RETENTION = re.compile(r"^[1-9][0-9]{0,3}[hdw]$")

# What an inventory file may be: a regular file of at most this size, whose YAML
# expands to at most this many values, nested at most this deep (inventory.example.yaml:
# about 4 KiB, 300 values, depth 5).
MAX_INVENTORY_BYTES = 1 << 20
MAX_YAML_VALUES = 50_000
MAX_YAML_DEPTH = 16

# Kubernetes releases the platform accepts: minor -> newest patch published when this
# was written (kubernetes.io/releases, November 2025). 1.31 is the oldest minor whose
# kubeadm reads the v1beta4 configuration of manifests/kubernetes; 1.34.2 is what
# manifests/versions.yaml pins and the lab runs. A version outside this table does
# not exist (or is not known yet): add the new patch here when one ships.
KUBERNETES_RELEASES = {31: 14, 32: 10, 33: 6, 34: 2}

# kube-controller-manager gives every node a /24 of the pod CIDR (kubeadm's default
# node-cidr-mask-size) and refuses a cluster CIDR more than 16 bits shorter than that;
# kube-apiserver refuses a service range larger than a /12.
NODE_POD_PREFIX = 24
MIN_POD_PREFIX = NODE_POD_PREFIX - 16
MIN_SERVICE_PREFIX = 12
MAX_SERVICE_PREFIX = 24  # at least 256 addresses: the platform's Services, DNS at the tenth

# kubeadm's documented minimums for a control-plane node and a worker.
KUBEADM_MIN_CPU = {"control-plane": 2, "worker": 1}
KUBEADM_MIN_MEMORY_GB = {"control-plane": 2, "worker": 1}

Role = Literal["control-plane", "worker"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{_short(value)} is not {what}")
    return value


def _check_each(pattern: re.Pattern[str], values: list[str], what: str) -> list[str]:
    for value in values:
        _check(pattern, value, what)
    return values


class Cluster(_Model):
    name: str = "datacloud"
    kubernetes_version: str = "1.34.2"
    pod_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.244.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.96.0.0/12")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check(DNS1123_LABEL, v, "a DNS-1123 label (lowercase letters, digits and '-', at most 63)")

    @field_validator("kubernetes_version")
    @classmethod
    def _version(cls, v: str) -> str:
        _check(K8S_VERSION, v, "a Kubernetes version like 1.34.2")
        if not kubernetes_release_exists(v):
            known = ", ".join(f"1.{m}.0-1.{m}.{p}" for m, p in KUBERNETES_RELEASES.items())
            raise ValueError(f"{v} is not a Kubernetes release the platform knows ({known})")
        return v


class Network(_Model):
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.1.0/24")
    gateway: str | None = None
    public_interface: str = "eth0"
    own_uplink: bool = False
    dns_servers: list[ipaddress.IPv4Address] = Field(default_factory=list)
    # The CNI: Calico (tigera-operator; enforces NetworkPolicy) or flannel with
    # the CNI reference plugins, plus SIG Network's kube-network-policies agent
    # for NetworkPolicy (flannel alone enforces none).
    cni: Literal["calico", "flannel"] = "calico"
    flannel_backend: Literal["vxlan", "host-gw"] = "vxlan"
    # flannel only: run kube-network-policies. It needs the kernel's nftables
    # queue support (CONFIG_NFT_QUEUE); without the agent NetworkPolicies are
    # accepted by the API but NOT enforced (preflight warns).
    network_policy_agent: bool = True

    @field_validator("public_interface")
    @classmethod
    def _iface(cls, v: str) -> str:
        return _check(INTERFACE, v, "a network interface name like eth0 or enp3s0")


class Ssh(_Model):
    user: str = "root"
    port: int = Field(strict=True, default=22, ge=1, le=65535)
    become: bool = False
    connect_timeout_s: int = Field(strict=True, default=10, ge=1, le=300)
    command_timeout_s: int = Field(strict=True, default=1800, ge=10, le=86400)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        return _check(UNIX_USER, v, "a Unix user name")


REPO_URL = re.compile(r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]{0,252})(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+-]*)?$")
OPENPGP_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$|^[0-9A-F]{64}$")
APT_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$|^\./$")


class Packages(_Model):
    """Where node_prep installs packages from.

    Without ``repository`` the nodes use their own apt sources for containerd
    and the pkgs.k8s.io repository of the pinned Kubernetes minor. With it,
    every package comes from that one apt repository (a private mirror for a
    network without internet): containerd, kubelet, kubeadm, kubectl and helm.
    """

    repository: str | None = None
    suite: str = "./"
    components: list[str] = Field(default_factory=list)
    trusted: bool = False  # [trusted=yes]: an unsigned repository on your own network
    # The key that signs the repository and its OpenPGP fingerprint: node_prep fetches the
    # key and installs nothing unless it is exactly that one key.
    apt_key_url: str | None = None
    apt_key_fingerprint: str | None = None
    # One Helm chart repository that mirrors every chart the platform installs
    # (None: each chart's upstream repository, reached through the gateway).
    chart_repository: str | None = None

    @field_validator("chart_repository")
    @classmethod
    def _charts(cls, v: str | None) -> str | None:
        return None if v is None else _check(REPO_URL, v, "an http(s) URL like http://10.0.0.1:8879")

    @field_validator("repository")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        return None if v is None else _check(REPO_URL, v, "an http(s) URL like http://10.0.0.1:8000/debian")

    @field_validator("apt_key_url")
    @classmethod
    def _key_url(cls, v: str | None) -> str | None:
        return None if v is None else _check(REPO_URL, v, "an http(s) URL like http://10.0.0.1:8000/debian/key.asc")

    @field_validator("apt_key_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is None:
            return None
        compact = v.replace(" ", "").upper() if isinstance(v, str) else v
        return _check(OPENPGP_FINGERPRINT, compact, "an OpenPGP fingerprint of 40 (or 64) hex digits")

    @model_validator(mode="after")
    def _key_pair(self) -> Packages:
        if self.apt_key_url is not None and self.repository is None:
            raise ValueError("apt_key_url is the key of packages.repository; set the repository too")
        if (self.apt_key_url is None) != (self.apt_key_fingerprint is None):
            raise ValueError("apt_key_url and apt_key_fingerprint go together; set both or neither")
        if self.apt_key_url is not None and self.trusted:
            raise ValueError("a repository with a pinned key is not trusted: yes; drop trusted")
        return self

    @field_validator("suite")
    @classmethod
    def _suite(cls, v: str) -> str:
        return _check(APT_WORD, v, "an apt suite like bookworm or ./ for a flat repository")

    @field_validator("components")
    @classmethod
    def _components(cls, v: list[str]) -> list[str]:
        return _check_each(APT_WORD, v, "an apt component like main")


REGISTRY_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*(:[0-9]{1,5})?$")
IMAGE_REPOSITORY = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,252})(:[0-9]{1,5})?(/[a-z0-9]([a-z0-9._-]{0,126}))*$")
SSH_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
PREFLIGHT_CHECK = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# kubelet's hard eviction signals and its defaults for them (KubeletConfiguration evictionHard)
EVICTION_DEFAULTS = {
    "memory.available": "100Mi",
    "nodefs.available": "10%",
    "nodefs.inodesFree": "5%",
    "imagefs.available": "15%",
}
EVICTION_SIGNALS = (*EVICTION_DEFAULTS, "imagefs.inodesFree", "pid.available")
EVICTION_THRESHOLD = re.compile(r"^(?:(?:100|[1-9]?[0-9])(?:\.[0-9]{1,2})?%|[0-9]{1,12}(?:Ki|Mi|Gi|Ti)?)$")
IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class KubernetesSettings(_Model):
    """How kubeadm, kubelet and kube-proxy run on the nodes.

    The defaults are right for real machines (systemd, cgroup v2, a writable
    conntrack table). Each other value exists for a kind of host; see
    docs/operations.md ("Node runtime settings").
    """

    cgroup_driver: Literal["systemd", "cgroupfs"] = "systemd"  # cgroupfs: nodes without systemd as init
    allow_cgroup_v1: bool = False  # kubelet failCgroupV1: false (1.35+ refuse cgroup v1 hosts)
    per_node_cgroup_root: bool = False  # kubelet --cgroup-root=/datacloud-<cluster>-<node> (nodes sharing a kernel)
    kube_proxy_conntrack_max_per_core: int | None = Field(strict=True, default=None, ge=0, le=1_000_000)  # 0: keep the kernel's
    ignore_preflight_errors: list[str] = Field(default_factory=list, max_length=20)  # kubeadm checks, e.g. SystemVerification
    image_repository: str | None = None  # kubeadm imageRepository (a private registry holding the control-plane images)
    # kubelet evictionHard: signal -> threshold ("2Gi", "10%"); the signals not named keep kubelet's defaults
    eviction_hard: dict[str, str] = Field(default_factory=dict, max_length=len(EVICTION_SIGNALS))

    @field_validator("eviction_hard")
    @classmethod
    def _eviction(cls, v: dict[str, str]) -> dict[str, str]:
        for signal, threshold in v.items():
            if signal not in EVICTION_SIGNALS:
                raise ValueError(f"{_short(signal)} is not a kubelet eviction signal (one of {', '.join(EVICTION_SIGNALS)})")
            _check(EVICTION_THRESHOLD, threshold, f"a threshold for {signal} like 2Gi or 10%")
        return v

    def eviction_thresholds(self) -> dict[str, str]:
        """The hard eviction thresholds kubelet applies: its defaults, then the inventory's. The kubeadm config
        writes them all when the inventory names any signal (kubelet turns off every signal its map leaves out)."""
        return {**EVICTION_DEFAULTS, **self.eviction_hard}

    @field_validator("ignore_preflight_errors")
    @classmethod
    def _checks(cls, v: list[str]) -> list[str]:
        return _check_each(PREFLIGHT_CHECK, v, "a kubeadm preflight check name like SystemVerification")

    @field_validator("image_repository")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        return None if v is None else _check(IMAGE_REPOSITORY, v, "an image repository like registry.example.lan:5000/k8s")


class ContainerdSettings(_Model):
    """containerd on every node."""

    # The kernel refuses to let runc lower oom_score_adj (no CAP_SYS_RESOURCE, e.g. in some VMs/containers).
    restrict_oom_score_adj: bool = False
    # upstream registry -> mirror URLs tried in order before it (hosts.toml); a URL
    # with a path is the registry API root itself (containerd's override_path).
    registry_mirrors: dict[str, list[str]] = Field(default_factory=dict, max_length=20)

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for host, urls in v.items():
            _check(REGISTRY_HOST, host, "a registry host like registry.k8s.io or docker.io")
            if not isinstance(urls, list) or not 1 <= len(urls) <= 5:
                raise ValueError(f"registry_mirrors.{host} must list 1 to 5 mirror URLs")
            for u in urls:
                _check(REPO_URL, u, "a mirror URL like http://10.0.0.1:5000 or http://10.0.0.1:5000/v2/registry.k8s.io")
        return v


class ImagesSettings(_Model):
    """Where the nodes pull the images this project builds (manifests/images/*).

    ``registry`` is the installation's own repository prefix; the names and tags come from
    manifests/versions.yaml (``spark.image``, ``jupyter.image``), so the Spark image is
    ``<registry>/spark:<tag>``. A digest (``sha256:<64 hex>``, what the push printed) pins
    the exact build: ``<registry>/spark:<tag>@sha256:...``, pulled ``IfNotPresent``; an image
    without one is pulled ``Always`` (docs/operations.md, "Our own images").
    """

    registry: str | None = None  # e.g. registry.example.internal:5000/datacloud
    spark_digest: str | None = None
    jupyter_digest: str | None = None

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str | None) -> str | None:
        if v is None:
            return None
        what = "a registry-qualified repository like registry.example.internal:5000/datacloud"
        _check(IMAGE_REPOSITORY, v, what)
        host = v.split("/", 1)[0]
        if not ("." in host or ":" in host or host == "localhost"):
            raise ValueError(f"{_short(v)} is not {what} (it would resolve on Docker Hub)")
        return v

    @field_validator("spark_digest", "jupyter_digest")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        return None if v is None else _check(IMAGE_DIGEST, v, "an image digest like sha256:<64 hex digits>")


class Disk(_Model):
    device: str
    size_gb: int = Field(strict=True, ge=1, le=1_000_000)
    use: Literal["ceph", "none"] = "none"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        _check(DEVICE, v, "a device path like /dev/sdb")
        if any(part in (".", "..") for part in v.split("/")):
            raise ValueError(f"{_short(v)} climbs out of /dev with '.' or '..'; name the device like /dev/sdb")
        return v


class Node(_Model):
    name: str
    address: ipaddress.IPv4Address
    roles: list[Role] = Field(default_factory=lambda: ["worker"], min_length=1)
    cpu: int = Field(strict=True, ge=1, le=1024)
    memory_gb: float = Field(strict=True, gt=0, le=16384)
    disks: list[Disk] = Field(default_factory=list)
    # The node's SSH host key as OpenSSH prints it (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub):
    # the first connection checks it instead of trusting whatever key the node offers.
    ssh_host_key: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_labels(cls, data: Any) -> Any:
        # Node labels were accepted once but no stage ever applied them to the nodes.
        if isinstance(data, dict) and "labels" in data:
            raise PydanticCustomError("labels_removed", "node labels are not applied by any stage")
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check(DNS1123_LABEL, v, "a DNS-1123 label (lowercase letters, digits and '-', at most 63)")

    @field_validator("ssh_host_key")
    @classmethod
    def _host_key(cls, v: str | None) -> str | None:
        return None if v is None else _check(SSH_FINGERPRINT, v, "a SHA256 fingerprint like SHA256:<43 base64 characters>")

    @field_validator("address")
    @classmethod
    def _address(cls, v: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
        for what, bad in (
            ("a loopback address", v.is_loopback),
            ("a link-local address", v.is_link_local),
            ("a multicast address", v.is_multicast),
            ("the unspecified address", v.is_unspecified),
            ("a reserved address", v.is_reserved),
        ):
            if bad:
                raise ValueError(f"{v} is {what}; use the node's address on the private network")
        if v in local_addresses():
            raise ValueError(f"{v} is an address of this Airflow host itself; list the cluster's machines, not the admin host")
        return v

    @property
    def is_control_plane(self) -> bool:
        return "control-plane" in self.roles

    @property
    def schedulable(self) -> bool:
        """Runs platform workloads (workers, and a control plane that is also a worker)."""
        return "worker" in self.roles

    @property
    def ceph_disks(self) -> list[Disk]:
        return [d for d in self.disks if d.use == "ceph"]


# --- component settings: one defaults block per stage, sized for 8 GB nodes ---
# Memory in MiB, CPU in millicores. The capacity planner and the manifests
# read the same numbers, so the report describes what is really requested.


class Resources(_Model):
    cpu_m: int = Field(strict=True, ge=1, le=256_000)
    memory_mb: int = Field(strict=True, ge=16, le=4_000_000)
    limit_memory_mb: int | None = Field(strict=True, default=None, ge=16, le=4_000_000)

    @model_validator(mode="after")
    def _limit(self) -> Resources:
        if self.limit_memory_mb is not None and self.limit_memory_mb < self.memory_mb:
            raise ValueError("limit_memory_mb must be at least memory_mb")
        return self

    @property
    def limit_mb(self) -> int:
        return self.limit_memory_mb or self.memory_mb


def _r(cpu_m: int, memory_mb: int, limit_memory_mb: int | None = None) -> Any:
    return Field(default_factory=lambda: Resources(cpu_m=cpu_m, memory_mb=memory_mb, limit_memory_mb=limit_memory_mb))


class StorageSettings(_Model):
    """Rook-Ceph; with fewer than 3 Ceph disks on 3 nodes, local-path instead."""

    operator: Resources = _r(100, 192, 512)
    mon: Resources = _r(200, 512, 1024)
    mgr: Resources = _r(200, 512, 1024)
    osd: Resources = _r(300, 1152, 2048)
    osd_memory_target_mb: int = Field(strict=True, default=1024, ge=896, le=1_000_000)
    mds: Resources = _r(100, 384, 768)
    # CSI pods are several containers; these are per-pod totals that the render
    # splits over the containers (driver 2 shares, each sidecar 1 share).
    csi_plugin: Resources = _r(50, 96, 384)
    csi_provisioner: Resources = _r(50, 128, 640)
    exporter: Resources = _r(20, 32, 128)  # ceph-exporter, one per node with Ceph daemons
    prepare_osd: Resources = _r(100, 128, 512)  # short-lived osd-prepare jobs (not in the capacity catalogue)
    local_path: Resources = _r(10, 32, 128)
    health_timeout_s: int = Field(strict=True, default=1800, ge=60, le=86400)


class MongoSettings(_Model):
    shards: int = Field(strict=True, default=2, ge=1, le=64)
    replicas: int = Field(strict=True, default=3, ge=1, le=7)
    config_replicas: int = Field(strict=True, default=3, ge=1, le=7)
    mongos: int = Field(strict=True, default=2, ge=1, le=16)
    operator: Resources = _r(100, 128, 256)
    shard: Resources = _r(300, 768, 1024)
    config: Resources = _r(100, 384, 512)
    router: Resources = _r(100, 192, 384)
    volume_gb: int = Field(strict=True, default=50, ge=1, le=1_000_000)
    node_port: int | None = Field(strict=True, default=None, ge=30000, le=32767)

    @property
    def wiredtiger_cache_gb(self) -> float:
        """MongoDB's own rule (50 % of memory minus 1 GiB, at least 0.25 GiB), on the limit."""
        return round(max(0.25, 0.5 * (self.shard.limit_mb - 1024) / 1024), 2)


class SparkSettings(_Model):
    operator: Resources = _r(100, 128, 256)
    history_server: Resources = _r(100, 512, 1024)
    min_executors: int = Field(strict=True, default=1, ge=0, le=1000)
    max_executors: int = Field(strict=True, default=4, ge=1, le=1000)
    executor: Resources = _r(1000, 1024, 1536)
    driver: Resources = _r(500, 1024, 1536)
    event_log_volume_gb: int = Field(strict=True, default=10, ge=1, le=100_000)

    @model_validator(mode="after")
    def _executors(self) -> SparkSettings:
        if self.min_executors > self.max_executors:
            raise ValueError("min_executors must not exceed max_executors")
        return self


class JupyterSettings(_Model):
    hub: Resources = _r(100, 256, 512)
    proxy: Resources = _r(50, 96, 256)
    user: Resources = _r(500, 1024, 2048)
    volume_gb: int = Field(strict=True, default=10, ge=1, le=100_000)
    cull_idle_s: int = Field(strict=True, default=3600, ge=300, le=604800)


class MonitoringSettings(_Model):
    retention: str = "7d"
    retention_size_gb: int = Field(strict=True, default=15, ge=1, le=100_000)
    prometheus: Resources = _r(200, 1024, 2048)
    grafana: Resources = _r(100, 192, 384)
    alertmanager: Resources = _r(20, 64, 128)
    operator: Resources = _r(50, 96, 192)
    kube_state_metrics: Resources = _r(20, 96, 192)
    node_exporter: Resources = _r(20, 48, 96)
    mongodb_exporter: Resources = _r(20, 64, 128)
    headlamp: Resources = _r(20, 64, 128)

    @field_validator("retention")
    @classmethod
    def _retention(cls, v: str) -> str:
        return _check(RETENTION, v, "a Prometheus retention like 7d, 48h or 2w")


class CapacitySettings(_Model):
    # Share of allocatable memory the platform may request; the rest is kept
    # for Spark executors and notebooks.
    max_platform_share: float = Field(strict=True, default=0.60, gt=0, le=1)


class Components(_Model):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    mongo: MongoSettings = Field(default_factory=MongoSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    jupyter: JupyterSettings = Field(default_factory=JupyterSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)


class Inventory(_Model):
    cluster: Cluster = Field(default_factory=Cluster)
    network: Network = Field(default_factory=Network)
    ssh: Ssh = Field(default_factory=Ssh)
    packages: Packages = Field(default_factory=Packages)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    containerd: ContainerdSettings = Field(default_factory=ContainerdSettings)
    images: ImagesSettings = Field(default_factory=ImagesSettings)
    nodes: list[Node] = Field(min_length=1, max_length=100)
    components: Components = Field(default_factory=Components)

    @model_validator(mode="after")
    def _cross_checks(self) -> Inventory:
        seen_names: dict[str, int] = {}
        seen_addrs: dict[ipaddress.IPv4Address, int] = {}
        for i, node in enumerate(self.nodes):
            if node.name in seen_names:
                raise _FieldProblem(
                    f"nodes[{i}].name",
                    f"{node.name!r} is already used by nodes[{seen_names[node.name]}]; node names must be unique",
                )
            seen_names[node.name] = i
            if node.address in seen_addrs:
                raise _FieldProblem(
                    f"nodes[{i}].address",
                    f"{node.address} is already used by nodes[{seen_addrs[node.address]}]; node addresses must be unique",
                )
            seen_addrs[node.address] = i
            if node.address not in self.network.subnet:
                raise _FieldProblem(
                    f"nodes[{i}].address",
                    f"{node.address} is outside the private subnet {self.network.subnet}; fix the address or network.subnet",
                )
            if node.address in (self.network.subnet.network_address, self.network.subnet.broadcast_address):
                raise _FieldProblem(
                    f"nodes[{i}].address",
                    f"{node.address} is the network or broadcast address of {self.network.subnet}; use a host address",
                )
            devices = [d.device for d in node.disks]
            if len(set(devices)) != len(devices):
                raise _FieldProblem(f"nodes[{i}].disks", f"node {node.name} lists the same device twice; list each disk once")

        nets = {
            "cluster.pod_cidr": self.cluster.pod_cidr,
            "cluster.service_cidr": self.cluster.service_cidr,
            "network.subnet": self.network.subnet,
        }
        names = list(nets)
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                if nets[names[a]].overlaps(nets[names[b]]):
                    raise _FieldProblem(
                        names[b] if names[b] != "network.subnet" else names[a],
                        f"{nets[names[a]]} ({names[a]}) overlaps {nets[names[b]]} ({names[b]}); pick ranges that do not overlap",
                    )

        pod = self.cluster.pod_cidr
        need = max(0, math.ceil(math.log2(len(self.nodes))))  # bits for one /24 per node
        if pod.prefixlen > NODE_POD_PREFIX - need:
            raise _FieldProblem(
                "cluster.pod_cidr",
                f"{pod} is too small for {len(self.nodes)} node(s), which get a /{NODE_POD_PREFIX} each; "
                f"use a /{NODE_POD_PREFIX - need} or larger",
            )
        if pod.prefixlen < MIN_POD_PREFIX:
            raise _FieldProblem(
                "cluster.pod_cidr",
                f"{pod} is too large (kube-controller-manager takes at most a /{MIN_POD_PREFIX} for /{NODE_POD_PREFIX} "
                "node ranges); use something like 10.244.0.0/16",
            )
        svc = self.cluster.service_cidr
        if not MIN_SERVICE_PREFIX <= svc.prefixlen <= MAX_SERVICE_PREFIX:
            size = "too large (kube-apiserver takes at most a /12)" if svc.prefixlen < MIN_SERVICE_PREFIX else "too small"
            raise _FieldProblem(
                "cluster.service_cidr",
                f"{svc} is {size}; use a /{MIN_SERVICE_PREFIX} to /{MAX_SERVICE_PREFIX} like 10.96.0.0/12",
            )

        control = [n for n in self.nodes if n.is_control_plane]
        if len(control) != 1:
            raise _FieldProblem(
                "nodes",
                f"exactly one node must have the role control-plane, found {len(control)}; set roles: [control-plane] on one node",
            )
        if not any(n.schedulable for n in self.nodes):
            raise _FieldProblem("nodes", "no node has the role worker; give at least one node the role worker")

        if self.network.gateway is not None and self.network.gateway not in seen_names:
            raise _FieldProblem(
                "network.gateway", f"{_short(self.network.gateway)} is not the name of a node; name one of the nodes"
            )
        if self.network.gateway is None and not self.network.own_uplink:
            raise _FieldProblem(
                "network.gateway", "no gateway node is named; name the node with internet access, or set network.own_uplink: true"
            )

        workers = len(self.schedulable_nodes)
        mongo = self.components.mongo
        for field, count in (("replicas", mongo.replicas), ("config_replicas", mongo.config_replicas)):
            if count > workers:
                raise _FieldProblem(
                    f"components.mongo.{field}",
                    f"{count} replica set members need {count} schedulable nodes but the inventory has {workers}; lower it or add workers",
                )
        return self

    # --- derived facts used by the stages and the planner ---

    @property
    def control_plane(self) -> Node:
        return next(n for n in self.nodes if n.is_control_plane)

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.is_control_plane]

    @property
    def schedulable_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.schedulable]

    @property
    def gateway_node(self) -> Node | None:
        if self.network.own_uplink or self.network.gateway is None:
            return None
        return self.node(self.network.gateway)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise InventoryError(f"nodes: there is no node named {name!r}; use one of {', '.join(n.name for n in self.nodes)}")

    @property
    def ceph_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.ceph_disks and n.schedulable]

    @property
    def storage_backend(self) -> Literal["rook-ceph", "local-path"]:
        """Ceph needs at least 3 disks on at least 3 schedulable nodes."""
        disks = sum(len(n.ceph_disks) for n in self.ceph_nodes)
        return "rook-ceph" if len(self.ceph_nodes) >= 3 and disks >= 3 else "local-path"

    @property
    def ceph_replication(self) -> int:
        return max(1, min(3, len(self.ceph_nodes)))

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.storage_backend == "local-path":
            disks = sum(len(n.ceph_disks) for n in self.nodes)
            out.append(
                f"storage: {disks} Ceph disk(s) on {len(self.ceph_nodes)} node(s) is fewer than 3 disks on 3 nodes, "
                "so storage falls back to the local-path provisioner (no replication, RWX unavailable)"
            )
        if self.network.cni == "flannel" and not self.network.network_policy_agent:
            out.append(
                "network: flannel without the network policy agent enforces no NetworkPolicy; "
                "the platform's default-deny policies are accepted but have no effect"
            )
        unused = [n.name for n in self.nodes if any(d.use == "ceph" for d in n.disks) and not n.schedulable]
        if unused:
            out.append(f"storage: Ceph disks on {', '.join(unused)} are not used because those nodes run no workloads")
        return out

    def cgroup_root(self, node: Node) -> str | None:
        """kubelet's --cgroup-root for this node, when the inventory asks for one per node."""
        if not self.kubernetes.per_node_cgroup_root:
            return None
        return f"/datacloud-{self.cluster.name}-{node.name}"

    @property
    def mon_count(self) -> int:
        return 3 if len(self.ceph_nodes) >= 3 else 1


class _FieldProblem(ValueError):
    """Raised inside validators to name the exact field path of a cross-field problem."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# --- turning pydantic's errors into one sentence each ---


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += ("." if out else "") + part
        else:  # a key of the user's that is not a plain word (newlines, dots, 1 MB of text)
            out += f"[{_short(part)}]"
    return out or "inventory"


_EXCERPT = reprlib.Repr()  # keyword arguments only from Python 3.12
for _name, _limit in {
    "maxlevel": 2,
    "maxtuple": 3,
    "maxlist": 3,
    "maxdict": 3,
    "maxset": 3,
    "maxstring": 50,
    "maxother": 50,
    "maxlong": 40,
}.items():
    setattr(_EXCERPT, _name, _limit)


def _short(value: Any) -> str:
    """A short excerpt of a value for an error message: never the whole of a large (or
    aliased) value, which reprlib does not even walk, and never more than one line."""
    text = _EXCERPT.repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _sentence(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = _path(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = _short(err.get("input"))
    if kind == "value_error" and isinstance(ctx.get("error"), _FieldProblem):
        problem: _FieldProblem = ctx["error"]
        return f"{problem.path}: {problem.message}."
    if kind == "labels_removed":
        return (
            f"{path}.labels: node labels are not part of the inventory any more (no stage applied them to the nodes); "
            "remove them and label nodes with kubectl label node if you need labels."
        )
    if kind == "missing":
        return f"{path} is missing; add it (see inventory.example.yaml)."
    if kind == "extra_forbidden":
        return f"{path} is not a known field; remove it or fix its spelling."
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{path} must be a whole number, got {got}."
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"{path} must be a number, got {got}."
    if kind in ("bool_type", "bool_parsing"):
        return f"{path} must be true or false, got {got}."
    if kind in ("string_type",):
        return f"{path} must be a string, got {got}."
    if kind in ("list_type",):
        return f"{path} must be a list, got {got}."
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{path} must be a mapping of fields, got {got}."
    if kind in ("too_short",):
        return f"{path} must have at least {ctx.get('min_length')} item(s); add them."
    if kind in ("too_long",):
        return f"{path} may have at most {ctx.get('max_length')} items; remove some."
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        limit = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        limit = f"{limit:g}" if isinstance(limit, float) else limit
        return f"{path} must be {bound} {limit}, got {got}."
    if kind == "literal_error":
        return f"{path} must be one of {ctx.get('expected')}, got {got}."
    if kind in ("ip_v4_address", "ip_any_address"):
        return f"{path} must be an IPv4 address like 192.168.1.10, got {got}."
    if kind in ("ip_v4_network", "ip_any_network"):
        return f"{path} must be an IPv4 network in CIDR form like 192.168.1.0/24 (host bits zero), got {got}."
    msg = str(err.get("msg", "is invalid"))
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    msg = msg.replace("\n", " ").rstrip(".")
    return f"{path}: {msg}; fix it."


def problems_of(exc: ValidationError) -> list[str]:
    return [_sentence(e) for e in exc.errors(include_url=False)]


def _measure(data: Any, source: str) -> None:
    """Refuse YAML that expands past MAX_YAML_VALUES values (aliases of aliases: a
    "billion laughs" document is small on disk) or nests past MAX_YAML_DEPTH, before
    anything walks it recursively. Iterative, and stops at the first limit."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise InventoryError(
                f"{source} expands to more than {MAX_YAML_VALUES} values (YAML aliases?); write the inventory out plainly."
            )
        if depth > MAX_YAML_DEPTH:
            raise InventoryError(f"{source} is nested too deeply; keep to the layout of inventory.example.yaml.")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for kv in value.items() for v in kv)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_inventory(data: Any, source: str = "inventory") -> Inventory:
    """Validate already-loaded YAML data."""
    if not isinstance(data, dict):
        raise InventoryError(f"{source} must be a YAML mapping with at least a 'nodes' list; see inventory.example.yaml.")
    _measure(data, source)
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        problems = problems_of(exc)
        error = InventoryError(problems[0])
        error.problems = problems  # type: ignore[attr-defined]
        raise error from None
    except RecursionError:
        raise InventoryError(f"{source} is nested too deeply; keep to the layout of inventory.example.yaml.") from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def read_inventory_file(path: str | Path) -> str:
    """The text of an inventory file: a regular file (never a device, FIFO or socket,
    which could block or never end) of at most MAX_INVENTORY_BYTES, in UTF-8."""
    path = Path(path)
    shown = _shown(str(path))
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise InventoryError(
                f"inventory file {shown} is a {_kind(before.st_mode)}, not a regular file; point it at a YAML file."
            )
        # O_NONBLOCK: a FIFO swapped in after the check cannot block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InventoryError(
            f"inventory file {shown} does not exist; copy inventory.example.yaml to inventory.yaml and edit it."
        ) from None
    except OSError as exc:
        raise InventoryError(f"inventory file {shown} cannot be read ({exc.strerror}); check the path and permissions.") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InventoryError(f"inventory file {shown} is a {_kind(st.st_mode)}, not a regular file; point it at a YAML file.")
        raw = f.read(MAX_INVENTORY_BYTES + 1)
    if len(raw) > MAX_INVENTORY_BYTES:
        raise InventoryError(
            f"inventory file {shown} is larger than {MAX_INVENTORY_BYTES // 1024} KiB, far more than an inventory needs; "
            "point it at the inventory YAML."
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InventoryError(f"inventory file {shown} is not UTF-8 text; save it as UTF-8.") from None


def load_inventory(path: str | Path) -> Inventory:
    path = Path(path)
    return parse_inventory_text(read_inventory_file(path), str(path))


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKey(
                    None,
                    None,
                    f"key {_short(key)} appears twice in one mapping (also line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _shown(text: str) -> str:
    """A path or source name as quoted in an error: one line, at most 160 characters."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= 160 else text[:157] + "..."


def parse_inventory_text(text: str, source: str = "inventory") -> Inventory:
    shown = _shown(source)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a yaml.SafeLoader
    except _DuplicateKey as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
        raise InventoryError(f"{shown} is not valid at line {line}: {exc.problem}; keep one of them.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(getattr(exc, "problem", None) or "syntax error").replace("\n", " ")[:80]
        raise InventoryError(f"{shown} is not valid YAML{where} ({problem}); fix the syntax there.") from None
    except RecursionError:
        raise InventoryError(f"{shown} is nested too deeply; keep to the layout of inventory.example.yaml.") from None
    return parse_inventory(data, shown)


def kubernetes_release_exists(version: str) -> bool:
    """Whether 1.<minor>.<patch> is a release in KUBERNETES_RELEASES."""
    m = K8S_VERSION.fullmatch(version)
    return bool(m) and int(m.group(2)) <= KUBERNETES_RELEASES.get(int(m.group(1)), -1)


@functools.cache
def local_addresses() -> frozenset[ipaddress.IPv4Address]:
    """The IPv4 addresses of the host this runs on (the Airflow host), from the kernel's
    local routing table; empty where /proc/net/fib_trie does not exist."""
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return frozenset()
    out = set()
    for prev, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL":
            m = re.search(r"(\d{1,3}(?:\.\d{1,3}){3})\s*$", prev)
            if m:
                out.add(ipaddress.IPv4Address(m.group(1)))
    return frozenset(out)


# --- allocatable resources, as kubelet reserves them on a node ---


def reserved_memory_mb(memory_mb: float) -> int:
    """kube-reserved + system-reserved + eviction threshold, with the tiered rule
    (25 % of the first 4 GiB, 20 % of the next 4, 10 % of the next 8, 6 % of the
    next 112, 2 % above) that managed Kubernetes services use, plus 100 MiB eviction."""
    tiers = [(4096, 0.25), (4096, 0.20), (8192, 0.10), (114688, 0.06), (math.inf, 0.02)]
    left, total = memory_mb, 0.0
    for size, share in tiers:
        part = min(left, size)
        total += part * share
        left -= part
        if left <= 0:
            break
    return int(total) + 100


def reserved_cpu_m(cpus: int) -> int:
    """6 % of the first core, 1 % of the second, 0.5 % of the next two, 0.25 % above."""
    tiers = [(1, 60), (1, 10), (2, 5), (math.inf, 2.5)]
    left, total = float(cpus), 0.0
    for size, milli in tiers:
        part = min(left, size)
        total += part * milli
        left -= part
        if left <= 0:
            break
    return int(total)


def allocatable(node: Node) -> tuple[int, int]:
    """(cpu millicores, memory MiB) that pods may request on this node."""
    mem = node.memory_gb * 1024
    return node.cpu * 1000 - reserved_cpu_m(node.cpu), int(mem - reserved_memory_mb(mem))
