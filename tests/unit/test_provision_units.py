"""Unit tests of remote execution, the stages' pure parts and the provisioning scripts (no lab needed)."""

from __future__ import annotations

import itertools
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacloud import config
from datacloud.errors import InventoryError, TransientError
from datacloud.inventory import load_inventory, parse_inventory
from datacloud.remote import Result, build_command, script_argv, script_text
from datacloud.stages._common import ParamsError, RunParams

SCRIPTS = sorted(p for p in config.SCRIPTS_DIR.rglob("*.sh"))
LAB_SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "lab").glob("*.sh"))
HOSTILE = ["; rm -rf /", "$(touch /tmp/pwned)", "`id`", "a\nb", "x' ; echo '", '"; reboot; "', "a b", "*", "$HOME", "\\", "-rf"]


# --- nothing unquoted reaches a shell ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    argv=st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40), min_size=1, max_size=6),
    values=st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40), max_size=3),
    become=st.booleans(),
)
def test_build_command_round_trips_through_a_shell_parser(argv: list[str], values: list[str], become: bool) -> None:
    env = {f"V{i}": v for i, v in enumerate(values)}
    words = shlex.split(build_command(argv, env=env, become=become))
    expected = (["sudo", "-n", "--"] if become else []) + (["env", *[f"{k}={v}" for k, v in env.items()]] if env else []) + argv
    assert words == expected


def test_hostile_words_are_inert_in_a_real_shell(tmp_path: Path) -> None:
    """bash itself receives every hostile word as one literal argument."""
    marker = tmp_path / "pwned"
    words = [w.replace("/tmp/pwned", str(marker)) for w in HOSTILE]
    cmd = build_command(["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *words], env={"X": words[1]})
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out) == words
    assert not marker.exists()


@pytest.mark.parametrize("name", ["lower", "1X", "A-B", "A B", "A;B", "A=B", ""])
def test_environment_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match="environment name"):
        build_command(["true"], env={name: "x"})


def test_nul_bytes_and_empty_commands_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        build_command(["echo", "a\x00b"])
    with pytest.raises(ValueError, match="NUL"):
        build_command(["echo"], env={"A": "\x00"})
    with pytest.raises(ValueError, match="empty"):
        build_command([])


@pytest.mark.parametrize("name", ["../etc/passwd", "x.py", "a b.sh", "/abs.sh", "$(id).sh", "lib"])
def test_only_script_names_from_include_scripts(name: str) -> None:
    with pytest.raises(ValueError, match="script name"):
        script_text(name)


def test_scripts_travel_as_one_argument_with_lib_first() -> None:
    argv = script_argv("node-prep.sh", ["; rm -rf /"])
    assert argv[:2] == ["bash", "-c"]
    assert argv[2].startswith((config.SCRIPTS_DIR / "lib.sh").read_text())
    assert argv[3:] == ["node-prep.sh", "; rm -rf /"]


def test_result_protocol() -> None:
    from datacloud.remote import _LineSink

    sink = _LineSink("n1", "", quiet=True)
    for chunk in (b"@@chan", b"ge write /etc/x\nplain\n@@fact cpus 4\n@@fact empty\n", b"tail-without-newline"):
        sink.feed(chunk)
    sink.close()
    assert sink.text.endswith("tail-without-newline")


# --- Params and inventory: hostile strings rejected with one sentence ------------------------


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_params_rejected(bad: str) -> None:
    for params in (
        {"inventory": bad},
        {"inventory": "inventory.yaml", "kubernetes_version": bad},
        {"inventory": "inventory.yaml", "stages": [bad]},
        {"inventory": "inventory.yaml", "confirm": bad},
    ):
        with pytest.raises(ParamsError) as err:
            RunParams.from_params(params)
        assert "\n" not in str(err.value)
        assert str(err.value).endswith(".")


def test_params_defaults_and_version_override() -> None:
    from datacloud.stages import STAGES

    p = RunParams.from_params({"inventory": "inventory.example.yaml", "kubernetes_version": "1.33.4"})
    assert p.stages == STAGES
    assert p.dry_run is False
    assert p.load_inventory().cluster.kubernetes_version == "1.33.4"
    with pytest.raises(ParamsError):
        RunParams.from_params({"inventory": "../secret.yaml"})
    with pytest.raises(ParamsError):
        RunParams.from_params({"inventory": "x.yaml", "dry_run": "true"})


def _inventory(**over) -> dict:
    import yaml

    data = yaml.safe_load((config.REPO_ROOT / "inventory.example.yaml").read_text())
    for path, value in over.items():
        target = data
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target.setdefault(k, {})
        target[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize(
    "field",
    [
        "nodes.0.name",
        "ssh.user",
        "network.public_interface",
        "nodes.1.disks.1.device",
        "cluster.name",
        "packages.repository",
        "packages.suite",
    ],
)
def test_hostile_inventory_strings_rejected(field: str, bad: str) -> None:
    with pytest.raises(InventoryError) as err:
        parse_inventory(_inventory(**{field: bad}))
    assert "\n" not in str(err.value)


def test_package_repository_setting() -> None:
    from datacloud.stages.node_prep import apt_env, apt_key, private_source

    inv = parse_inventory(
        _inventory(
            **{
                "packages.repository": "http://10.0.0.1:8000/debian",
                "packages.suite": "bookworm",
                "packages.components": ["main"],
                "packages.trusted": True,
            }
        )
    )
    assert private_source(inv) == "deb [trusted=yes] http://10.0.0.1:8000/debian bookworm main"
    assert apt_env(inv)["APT_KEY"] == "" and apt_key(inv) is None  # trusted: no key to check
    public = load_inventory(config.REPO_ROOT / "inventory.example.yaml")
    env = apt_env(public)
    assert env["APT_SOURCE"].startswith("deb [signed-by=/etc/apt/keyrings/datacloud-kubernetes.gpg] https://")
    assert "/v1.34/deb/" in env["APT_SOURCE"]


# --- stages: rendering and checks ------------------------------------------------------------


def test_kubeadm_config_renders_the_inventory() -> None:
    import yaml

    from datacloud.stages.kubernetes import kubeadm_config

    inv = load_inventory(config.REPO_ROOT / "inventory.example.yaml")
    docs = list(yaml.safe_load_all(kubeadm_config(inv)))
    init, cluster, kubelet, proxy = docs
    assert init["localAPIEndpoint"]["advertiseAddress"] == "192.168.1.1"
    assert init["nodeRegistration"]["taints"] == []  # the master also runs workloads
    assert init["bootstrapTokens"][0]["ttl"] == "15m0s"
    assert cluster["kubernetesVersion"] == "v1.34.2"
    assert cluster["networking"] == {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12", "dnsDomain": "cluster.local"}
    assert kubelet["cgroupDriver"] == "systemd"
    assert proxy["kind"] == "KubeProxyConfiguration"


def test_join_command_is_validated_before_use() -> None:
    from datacloud.stages.kubernetes import parse_join_command

    good = "kubeadm join 192.168.1.1:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:" + "a" * 64
    assert parse_join_command(good) == ("192.168.1.1:6443", "abcdef.0123456789abcdef", "sha256:" + "a" * 64)
    for bad in (good.replace("abcdef.", "abc$(x)."), good.replace("kubeadm join", "rm -rf"), "", good.replace("6443", "6443;id")):
        with pytest.raises(TransientError):
            parse_join_command(bad)


def test_network_release_is_pinned_and_matches_capacity() -> None:
    from datacloud.render import versions
    from datacloud.stages.network import render

    inv = load_inventory(config.REPO_ROOT / "inventory.example.yaml")
    (rel,) = render(inv).releases
    assert rel.version == versions()["network"]["calico"]
    assert rel.values["installation"]["calicoNetwork"]["ipPools"][0]["cidr"] == "10.244.0.0/16"
    node = rel.values["installation"]["calicoNodeDaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert node["resources"]["requests"] == {"cpu": "150m", "memory": "192Mi"}  # datacloud.capacity: calico-node 150m/192Mi


def test_preflight_problems_are_one_sentence_each() -> None:
    from datacloud.stages.preflight import problems

    inv = load_inventory(config.REPO_ROOT / "inventory.example.yaml")
    ok = {
        "os_id": "debian",
        "os_version": "12",
        "os_name": "Debian 12",
        "cpus": "8",
        "mem_mb": "16000",
        "hostname": "",
        "clock_offset_s": 0.1,
        "clock_uncertainty_s": 0.01,
        "datacloud_cluster": "no",
        "ports_in_use": "",
        "leftovers": "",
    }
    facts = {
        n.name: {
            **ok,
            "hostname": n.name,
            "cpus": str(n.cpu),
            "mem_mb": str(int(n.memory_gb * 1000)),
            **{f"disk:{d.device}": "raw" for d in n.ceph_disks},
        }
        for n in inv.nodes
    }
    assert problems(inv, facts) == []
    facts["slave4"]["disk:/dev/sdb"] = "filesystem:ext4"
    facts["slave5"]["hostname"] = "slave4"
    facts["slave2"]["clock_offset_s"] = 42.0
    facts["master"]["ports_in_use"] = "6443"
    facts["slave2"]["mem_mb"] = "3000"
    found = problems(inv, facts)
    assert "slave4 (192.168.1.4): /dev/sdb has an ext4 filesystem; wipe it or set use: none." in found
    assert any(p.startswith("slave5 (192.168.1.5): hostname 'slave4' is also the hostname of slave4") for p in found)
    assert any(p.startswith("slave2 (192.168.1.2): the clock is +42.0s off") for p in found)
    assert any(p.startswith("master (192.168.1.1): ports 6443") for p in found)
    assert any(p.startswith("slave2 (192.168.1.2): has 3000 MiB of RAM but the inventory says memory_gb: 16") for p in found)
    assert len(found) == 5
    for p in found:
        assert p.endswith(".")
        assert "\n" not in p
    # our own earlier install is not a leftover
    facts = {
        n: {**f, "ports_in_use": "6443 10250", "leftovers": "/etc/kubernetes/kubelet.conf", "datacloud_cluster": "yes"}
        for n, f in facts.items()
    }
    assert not any("in use" in p or "remain" in p for p in problems(inv, facts))


def test_remote_script_exit_3_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from datacloud.errors import UserError
    from datacloud.remote import Remote

    inv = load_inventory(config.REPO_ROOT / "inventory.example.yaml")
    r = Remote(inv, "master")
    monkeypatch.setattr(r, "_exec", lambda *a, **k: Result(3, "", "interface eth9 does not exist on master; set x\n"))
    with pytest.raises(UserError, match=r"^master \(192\.168\.1\.1\): interface eth9 does not exist on master; set x\.$"):
        r.script("gateway.sh", env={"SUBNET": "x", "PUBLIC_IF": "eth9"})


# --- scripts: bash -n and shellcheck ----------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS + LAB_SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by ./dev setup")
def test_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", "-s", "bash", *map(str, SCRIPTS + LAB_SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# --- the DAGs -----------------------------------------------------------------------------------


def _load(dag_id: str):
    from tests.lab.run_dag import load_dag

    return load_dag(dag_id)


def test_provision_platform_structure() -> None:
    from datacloud.stages import STAGES
    from datacloud.stages._dag import NODES_POOL

    dag = _load("provision_platform")
    assert dag.schedule is None or str(dag.timetable.summary) in ("None", "")
    assert set(dag.tags) >= {"datacloud", "provision"}
    assert dag.doc_md
    assert set(dag.params.keys()) == {"inventory", "stages", "dry_run", "kubernetes_version"}
    groups = [g for g in dag.task_group.children if g in STAGES]
    order = [s for s in STAGES if s in groups]
    assert order[:5] == ["preflight", "gateway", "node_prep", "kubernetes", "network"]
    assert order[-1] == "verify"
    # groups are chained in order
    for a, b in itertools.pairwise(order):
        b_ids = {t.task_id for t in dag.tasks if t.task_id.startswith(b + ".")}
        first_of_b = [t for t in dag.tasks if t.task_id in b_ids and not t.upstream_task_ids & b_ids]
        assert any(u.startswith(a + ".") for t in first_of_b for u in t.upstream_task_ids), (a, b)
    prep = dag.get_task("node_prep.prepare")
    assert prep.pool == NODES_POOL
    assert prep.retries >= 2
    assert all(t.trigger_rule == "none_failed" for t in dag.tasks)
    assert dag.get_task("preflight.gather_nodes").upstream_task_ids == set()
    outlets = {str(o.uri) for t in dag.tasks for o in (t.outlets or [])}
    assert {f"datacloud://platform/{s}" for s in order} <= outlets


def test_platform_teardown_is_gated() -> None:
    dag = _load("platform_teardown")
    assert "destructive" in dag.tags
    assert "confirm" in dag.params
    confirm = dag.get_task("teardown.confirm")
    assert confirm.upstream_task_ids == set()
    assert all(t.task_id == "teardown.confirm" or t.upstream_task_ids for t in dag.tasks)


def test_preflight_refuses_a_var_lib_kubelet_would_evict_every_pod_on() -> None:
    """The stop-21 CI host: 42 GiB free of 252, under kubelet's imagefs.available 15 % (37.8 GiB) plus the
    images; kubelet evicted every pod half way through the run. Preflight says so before anything is changed,
    and an inventory floor that fits the disk (kubernetes.eviction_hard) or our own re-run passes."""
    import yaml

    from datacloud.inventory import parse_inventory
    from datacloud.stages.preflight import IMAGE_HEADROOM_GIB, eviction_floor_gib, var_lib_problem

    data = yaml.safe_load((config.REPO_ROOT / "inventory.example.yaml").read_text())
    inv = parse_inventory(data)
    full = {"var_lib_kb": str(252 * 2**20), "var_lib_free_kb": str(42 * 2**20)}
    assert eviction_floor_gib(inv, 252) == (pytest.approx(37.8), "imagefs.available 15%")
    assert var_lib_problem(inv, full, ours=False) == (
        "/var/lib has 42.0 GiB free of 252 GiB, and kubelet evicts every pod below 37.8 GiB (imagefs.available 15%) "
        f"while the platform's images need about {IMAGE_HEADROOM_GIB} GiB more; free space there, or set "
        "kubernetes.eviction_hard to floors that fit this disk (docs/operations.md)."
    )
    assert var_lib_problem(inv, full, ours=True) is None  # our images are on the disk already: floor + 1 GiB
    data["kubernetes"] = {**data.get("kubernetes", {}), "eviction_hard": {"imagefs.available": "2Gi", "nodefs.available": "5%"}}
    fitted = parse_inventory(data)
    assert eviction_floor_gib(fitted, 252) == (pytest.approx(12.6), "nodefs.available 5%")
    assert var_lib_problem(fitted, full, ours=False) is None
    assert var_lib_problem(inv, {}, ours=False) is None  # an older preflight.sh reported nothing
    small = {"var_lib_kb": str(20 * 2**20), "var_lib_free_kb": str(9 * 2**20)}
    assert "9.0 GiB free of 20 GiB" in var_lib_problem(inv, small, ours=False)
