"""Inventory settings for the node runtime (kubelet, kube-proxy, containerd, CNI, mirrors).

Defaults are right for real machines; each other value is rendered where the
tool reads it (kubeadm's configs, node-prep.sh's environment, the network stage).
"""

from __future__ import annotations

import pytest
import yaml

from datacloud.errors import InventoryError
from datacloud.inventory import parse_inventory
from datacloud.kube import chart_repository
from datacloud.render import render_text
from datacloud.stages.kubernetes import kubeadm_config
from datacloud.stages.network import render as network_render
from datacloud.stages.node_prep import runtime_env


def _inv(**extra):
    data = {
        "cluster": {"name": "lab1"},
        "network": {"subnet": "10.77.1.0/24", "own_uplink": True},
        "nodes": [
            {"name": "n1", "address": "10.77.1.11", "roles": ["control-plane", "worker"], "cpu": 2, "memory_gb": 4},
            {"name": "n2", "address": "10.77.1.12", "roles": ["worker"], "cpu": 2, "memory_gb": 4},
            {"name": "n3", "address": "10.77.1.13", "roles": ["worker"], "cpu": 2, "memory_gb": 4},
        ],
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_inventory(data)


VM = {
    "kubernetes": {
        "cgroup_driver": "cgroupfs",
        "allow_cgroup_v1": True,
        "per_node_cgroup_root": True,
        "kube_proxy_conntrack_max_per_core": 0,
        "ignore_preflight_errors": ["SystemVerification"],
    },
    "containerd": {
        "restrict_oom_score_adj": True,
        "registry_mirrors": {"registry.k8s.io": ["http://10.77.1.1:5000/v2/registry.k8s.io"]},
    },
}


def _docs(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def test_defaults_are_those_of_a_real_machine():
    inv = _inv()
    docs = _docs(kubeadm_config(inv))
    assert docs["KubeletConfiguration"] == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
    }
    assert "conntrack" not in docs["KubeProxyConfiguration"]
    assert "ignorePreflightErrors" not in docs["InitConfiguration"]["nodeRegistration"]
    assert [a["name"] for a in docs["InitConfiguration"]["nodeRegistration"]["kubeletExtraArgs"]] == ["node-ip"]
    env = runtime_env(inv, inv.nodes[0])
    assert env == {"CGROUP_DRIVER": "systemd", "RESTRICT_OOM_SCORE_ADJ": "0", "REGISTRY_MIRRORS": "", "CGROUP_ROOT": ""}
    assert inv.network.cni == "calico"


def test_vm_settings_reach_kubeadm_kubelet_and_kube_proxy():
    inv = _inv(**VM)
    docs = _docs(kubeadm_config(inv))
    assert docs["KubeletConfiguration"]["cgroupDriver"] == "cgroupfs"
    assert docs["KubeletConfiguration"]["failCgroupV1"] is False
    assert docs["KubeProxyConfiguration"]["conntrack"] == {"maxPerCore": 0}
    reg = docs["InitConfiguration"]["nodeRegistration"]
    assert reg["ignorePreflightErrors"] == ["SystemVerification"]
    assert {"name": "cgroup-root", "value": "/datacloud-lab1-n1"} in reg["kubeletExtraArgs"]
    assert docs["ClusterConfiguration"]["dns"]["imageTag"].startswith("v1.")
    join = yaml.safe_load(
        render_text(
            "kubernetes/kubeadm-join.yaml", inv=inv, endpoint="10.77.1.11:6443", token="t", ca_hash="h", node=inv.nodes[1]
        )
    )
    assert {"name": "cgroup-root", "value": "/datacloud-lab1-n2"} in join["nodeRegistration"]["kubeletExtraArgs"]
    assert join["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]
    env = runtime_env(inv, inv.nodes[1])
    assert env["CGROUP_DRIVER"] == "cgroupfs" and env["RESTRICT_OOM_SCORE_ADJ"] == "1"
    assert env["REGISTRY_MIRRORS"] == "registry.k8s.io http://10.77.1.1:5000/v2/registry.k8s.io"
    assert env["CGROUP_ROOT"] == "/datacloud-lab1-n2"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"containerd": {"registry_mirrors": {"Registry K8s": ["http://10.0.0.1:5000"]}}}, "containerd.registry_mirrors"),
        ({"containerd": {"registry_mirrors": {"docker.io": ["ftp://10.0.0.1"]}}}, "containerd.registry_mirrors"),
        ({"containerd": {"registry_mirrors": {"docker.io": []}}}, "containerd.registry_mirrors"),
        ({"kubernetes": {"ignore_preflight_errors": ["all; rm -rf /"]}}, "kubernetes.ignore_preflight_errors"),
        ({"kubernetes": {"cgroup_driver": "openrc"}}, "kubernetes.cgroup_driver"),
        ({"packages": {"chart_repository": "file:///charts"}}, "packages.chart_repository"),
        ({"network": {"cni": "weave"}}, "network.cni"),
    ],
)
def test_bad_runtime_settings_are_one_sentence(extra, field):
    with pytest.raises(InventoryError) as err:
        _inv(**extra)
    assert str(err.value).startswith(field), str(err.value)


def test_flannel_renders_flanneld_the_cni_writer_and_the_policy_agent():
    inv = _inv(network={"cni": "flannel", "flannel_backend": "host-gw"})
    rendered = network_render(inv)
    assert not rendered.releases
    objs = {(o["kind"], o["metadata"]["name"]) for o in rendered.all_objects()}
    assert ("DaemonSet", "kube-flannel-ds") in objs and ("DaemonSet", "kube-network-policies") in objs
    cm = next(o for o in rendered.all_objects() if o["kind"] == "ConfigMap")
    conf = yaml.safe_load(cm["data"]["net-conf.json"])
    assert conf == {"Network": "10.244.0.0/16", "EnableNFTables": True, "Backend": {"Type": "host-gw"}}
    ds = next(o for o in rendered.all_objects() if o["metadata"]["name"] == "kube-flannel-ds")
    assert [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]] == ["kube-flannel", "install-cni"]
    no_agent = _inv(network={"cni": "flannel", "network_policy_agent": False})
    assert ("DaemonSet", "kube-network-policies") not in {
        (o["kind"], o["metadata"]["name"]) for o in network_render(no_agent).all_objects()
    }
    assert any("enforces no NetworkPolicy" in w for w in no_agent.warnings)


def test_calico_stays_the_default_release():
    assert [r.chart for r in network_render(_inv()).releases] == ["tigera-operator"]


def test_chart_mirror_replaces_every_upstream_repository():
    release = network_render(_inv()).releases[0]
    assert chart_repository(_inv(), release) == release.repo
    assert chart_repository(_inv(packages={"chart_repository": "http://10.77.1.1:8879"}), release) == "http://10.77.1.1:8879"


class _RecordingKube:
    """Records the waits of network.ready (no cluster: what it waits for is the point)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def wait(self, kind, name=None, **kw) -> None:
        self.calls.append(("wait", kind, name or ("all" if kw.get("all_") else None)))

    def rollout_status(self, kind, name, *, namespace, timeout_s) -> None:
        self.calls.append(("rollout", kind, f"{namespace}/{name}"))


def _ready_calls(inv) -> list[tuple]:
    from types import SimpleNamespace

    from datacloud.stages import network

    kube = _RecordingKube()
    network.ready(SimpleNamespace(inv=inv, dry_run=False, kube=lambda: kube))
    return kube.calls


def test_ready_waits_for_what_the_stage_rendered():
    assert _ready_calls(_inv(network={"cni": "flannel"})) == [
        ("rollout", "daemonset", "kube-flannel/kube-flannel-ds"),
        ("rollout", "daemonset", "kube-system/kube-network-policies"),
        ("wait", "node", "all"),
    ]
    assert _ready_calls(_inv(network={"cni": "flannel", "network_policy_agent": False})) == [
        ("rollout", "daemonset", "kube-flannel/kube-flannel-ds"),
        ("wait", "node", "all"),
    ]
    assert _ready_calls(_inv()) == [("wait", "tigerastatus", "calico"), ("wait", "node", "all")]


def test_preflight_logs_the_inventory_warnings(monkeypatch, caplog):
    import logging
    from types import SimpleNamespace

    from datacloud.stages import preflight

    monkeypatch.setattr(preflight, "problems", lambda inv, facts: [])
    monkeypatch.setattr(preflight, "table", lambda inv, facts: "")
    monkeypatch.setattr(preflight, "image_problems", lambda inv, stages: [])  # tests/unit/test_own_images.py
    inv = _inv(network={"cni": "flannel", "network_policy_agent": False})
    with caplog.at_level(logging.WARNING, logger="datacloud.stages.preflight"):
        preflight.check(SimpleNamespace(inv=inv, dry_run=True), [])
    assert any("enforces no NetworkPolicy" in r.getMessage() for r in caplog.records)


def test_eviction_thresholds_keep_kubelets_defaults_for_the_signals_not_named():
    """kubelet turns off every hard-eviction signal its map leaves out, so naming one writes the others'
    defaults too; without the setting the KubeletConfiguration has no evictionHard at all."""
    assert "evictionHard" not in _docs(kubeadm_config(_inv()))["KubeletConfiguration"]
    inv = _inv(kubernetes={"eviction_hard": {"imagefs.available": "1Gi", "pid.available": "5%"}})
    assert _docs(kubeadm_config(inv))["KubeletConfiguration"]["evictionHard"] == {
        "memory.available": "100Mi",
        "nodefs.available": "10%",
        "nodefs.inodesFree": "5%",
        "imagefs.available": "1Gi",
        "pid.available": "5%",
    }


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"disk.available": "1Gi"}, "'disk.available' is not a kubelet eviction signal"),
        ({"nodefs.available": "ten percent"}, "is not a threshold for nodefs.available like 2Gi or 10%"),
        ({"nodefs.available": "101%"}, "is not a threshold for nodefs.available"),
        ({"memory.available": "1GB"}, "is not a threshold for memory.available"),
    ],
)
def test_an_eviction_threshold_kubelet_would_refuse_is_one_clear_sentence(setting, says):
    with pytest.raises(InventoryError, match=says):
        _inv(kubernetes={"eviction_hard": setting})
