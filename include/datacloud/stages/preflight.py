"""preflight: every node reachable and fit for the platform, before anything changes.

Per node (mapped): connect (recording the host key on first use), gather facts
with ``include/scripts/preflight.sh`` — OS and kernel, CPU and RAM, swap,
Kubernetes ports, hostname, clock, raw Ceph disks, leftovers of another
install. Then one task checks them all against the inventory and the kubeadm
minimums, and the images: every image pin well formed, our own images
registry-qualified in each stage of the run that uses them. It logs a per-node
table and fails with one sentence per problem. Changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from datacloud.errors import UserError
from datacloud.images import (
    OWN_IMAGES,
    ImageVersionError,
    check_versions,
    pin_problems,
    registry_missing,
    unqualified_own_images,
)
from datacloud.inventory import KUBEADM_MIN_CPU, KUBEADM_MIN_MEMORY_GB, Inventory, Node
from datacloud.stages._common import StageContext, Step, all_nodes, outcome

log = logging.getLogger(__name__)

SUPPORTED_OS = {"debian": 12, "ubuntu": 22}
MAX_CLOCK_OFFSET_S = 2.0
MEMORY_TOLERANCE = 0.85  # MemTotal is below the nominal size (firmware, kernel)
# what the platform's images take on one node once unpacked (Ceph, Spark, MongoDB, JupyterHub, monitoring:
# an estimate from their sizes), on top of kubelet's eviction floor, for a first install
IMAGE_HEADROOM_GIB = 8
QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class PreflightError(UserError):
    """One or more nodes are not fit; the message lists one sentence per problem."""


def gather(ctx: StageContext, node: Node) -> dict:
    remote = ctx.remote(node, record_host_key=True, unreachable_is_user_error=True)
    disks = [d.device for d in node.ceph_disks]
    remote.connect()  # so the clock reading below does not include the handshake
    sent = time.time()
    res = remote.script("preflight.sh", *disks, env={**ctx.env, "CLUSTER_NAME": ctx.inv.cluster.name})
    received = time.time()
    facts: dict[str, Any] = dict(res.facts)
    try:
        facts["clock_offset_s"] = round(float(facts.get("time", "0")) - (sent + received) / 2, 3)
        facts["clock_uncertainty_s"] = round((received - sent) / 2, 3)
    except ValueError:
        facts["clock_offset_s"] = None
    return outcome("preflight", node.name, [], ctx.dry_run, node=node.name, facts=facts)


def problems(inv: Inventory, facts_by_node: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per problem, each naming the node and what to do."""
    out: list[str] = []
    hostnames: dict[str, str] = {}
    for node in inv.nodes:
        f = facts_by_node.get(node.name)
        who = f"{node.name} ({node.address})"
        if f is None:
            out.append(f"{who}: no facts were gathered; run preflight for this node again.")
            continue
        role = "control-plane" if node.is_control_plane else "worker"
        os_id, os_ver = f.get("os_id", "unknown"), f.get("os_version", "0")
        try:
            major = int(str(os_ver).split(".")[0])
        except ValueError:
            major = 0
        if os_id not in SUPPORTED_OS:
            out.append(f"{who}: the OS is {f.get('os_name')}; use Debian 12+ or Ubuntu 22.04+.")
        elif major < SUPPORTED_OS[os_id]:
            out.append(f"{who}: {f.get('os_name')} is too old; use Debian 12+ or Ubuntu 22.04+.")
        cpus, mem_mb = int(f.get("cpus", 0)), int(f.get("mem_mb", 0))
        if cpus < KUBEADM_MIN_CPU[role]:
            out.append(
                f"{who}: has {cpus} CPU(s) but a {role} needs at least {KUBEADM_MIN_CPU[role]} (kubeadm); use a bigger machine."
            )
        elif cpus < node.cpu:
            out.append(f"{who}: has {cpus} CPU(s) but the inventory says cpu: {node.cpu}; set cpu: {cpus}.")
        if mem_mb < KUBEADM_MIN_MEMORY_GB[role] * 1024 * MEMORY_TOLERANCE:
            out.append(
                f"{who}: has {mem_mb} MiB of RAM but a {role} needs {KUBEADM_MIN_MEMORY_GB[role]} GB (kubeadm); add memory."
            )
        elif mem_mb < node.memory_gb * 1024 * MEMORY_TOLERANCE:
            out.append(
                f"{who}: has {mem_mb} MiB of RAM but the inventory says memory_gb: {node.memory_gb:g}; "
                f"set memory_gb: {max(1, round(mem_mb / 1024))}."
            )
        hostname = f.get("hostname", "")
        if hostname in hostnames:
            out.append(
                f"{who}: hostname {hostname!r} is also the hostname of {hostnames[hostname]}; "
                "give every machine its own hostname."
            )
        hostnames.setdefault(hostname, node.name)
        offset = f.get("clock_offset_s")
        if offset is None:
            out.append(f"{who}: the clock could not be read; check that date works there.")
        elif abs(offset) > MAX_CLOCK_OFFSET_S + float(f.get("clock_uncertainty_s", 0)):
            out.append(f"{who}: the clock is {offset:+.1f}s off this host's; enable NTP (systemd-timesyncd or chrony).")
        ours = f.get("datacloud_cluster") == "yes"
        if not ours:
            if f.get("ports_in_use"):
                out.append(f"{who}: ports {f['ports_in_use']} that Kubernetes needs are in use; stop what listens there.")
            if f.get("leftovers"):
                out.append(
                    f"{who}: {f['leftovers']} remain from another Kubernetes install; "
                    "run platform_teardown or kubeadm reset there first."
                )
        disk_problem = var_lib_problem(inv, f, ours)
        if disk_problem:
            out.append(f"{who}: {disk_problem}")
        for disk in node.ceph_disks:
            state = f.get(f"disk:{disk.device}", "missing")
            if state == "missing":
                out.append(f"{who}: {disk.device} does not exist; fix the device name or set use: none.")
            elif state.startswith("filesystem:") and not ours:
                out.append(f"{who}: {disk.device} has an {state.split(':', 1)[1]} filesystem; wipe it or set use: none.")
            elif state.startswith("partitions:") and not ours:
                out.append(f"{who}: {disk.device} has {state.split(':', 1)[1]} partition(s); wipe it or set use: none.")
    return out


def eviction_floor_gib(inv: Inventory, total_gib: float) -> tuple[float, str]:
    """The highest of kubelet's disk eviction floors (nodefs/imagefs.available) on a filesystem of TOTAL_GIB,
    in GiB, and which signal it is ("imagefs.available 15%")."""
    thresholds = inv.kubernetes.eviction_thresholds()
    worst = (0.0, "")
    for signal in ("nodefs.available", "imagefs.available"):
        value = thresholds.get(signal)
        if not value:
            continue
        if value.endswith("%"):
            gib = total_gib * float(value[:-1]) / 100
        else:
            unit = value[-2:] if value[-2:] in QUANTITY else ""
            gib = float(value[: len(value) - len(unit)]) * QUANTITY.get(unit, 1) / 2**30
        if gib > worst[0]:
            worst = (gib, f"{signal} {value}")
    return worst


def var_lib_problem(inv: Inventory, f: dict[str, Any], ours: bool) -> str | None:
    """/var/lib too full: kubelet would evict the platform's pods as their images arrive (it reports
    DiskPressure below its floor). A first install needs the floor plus the images; a re-run, the floor."""
    try:
        total, free = int(f["var_lib_kb"]) / 2**20, int(f["var_lib_free_kb"]) / 2**20
    except (KeyError, ValueError):
        return None  # not reported (an older preflight.sh)
    if total <= 0:
        return None
    floor, signal = eviction_floor_gib(inv, total)
    need = floor + (1 if ours else IMAGE_HEADROOM_GIB)
    if free >= need:
        return None
    return (
        f"/var/lib has {free:.1f} GiB free of {total:.0f} GiB, and kubelet evicts every pod below {floor:.1f} GiB "
        f"({signal}) while the platform's images need about {need - floor:.0f} GiB more; free space there, "
        "or set kubernetes.eviction_hard to floors that fit this disk (docs/operations.md)."
    )


def image_problems(inv: Inventory, stages: tuple[str, ...] | list[str]) -> list[str]:
    """Malformed image pins; our own images without a registry in a stage of the run that uses them."""
    out = pin_problems()
    missing = registry_missing(inv, stages)
    if missing:
        return [*out, missing]
    from datacloud.render import render_stage

    for stage in (s for s in OWN_IMAGES if s in stages):
        bad = unqualified_own_images(render_stage(stage, inv))
        if bad:
            out.append(
                f"the {stage} stage renders {', '.join(bad)} without a registry; "
                f"it must pull our images from images.registry ({inv.images.registry})."
            )
    return out


def exposure_problems(inv: Inventory, stages: tuple[str, ...] | list[str]) -> list[str]:
    """Services a run would expose on every node's address without TLS."""
    sentence = mongo_node_port_problem(inv)
    return [sentence] if sentence and "mongo" in stages else []


def mongo_node_port_problem(inv: Inventory) -> str | None:
    port = inv.components.mongo.node_port
    if port is None:
        return None
    return (
        f"components.mongo.node_port {port} would expose mongos on every node's address without TLS (its clients do "
        "not speak TLS yet); remove it and reach MongoDB through ./dev tunnels (an SSH forward)."
    )


def table(inv: Inventory, facts_by_node: dict[str, dict[str, Any]]) -> str:
    head = f"{'node':<12} {'address':<15} {'os':<22} {'kernel':<18} {'cpu':>4} {'mem MiB':>8} {'swap':>5} {'clock':>7}  state"
    rows = [head, "-" * len(head)]
    for node in inv.nodes:
        f = facts_by_node.get(node.name, {})
        offset = f.get("clock_offset_s")
        rows.append(
            f"{node.name:<12} {node.address!s:<15} {str(f.get('os_name', '?'))[:22]:<22} {str(f.get('kernel', '?'))[:18]:<18} "
            f"{f.get('cpus', '?'):>4} {f.get('mem_mb', '?'):>8} {'on' if f.get('swap_active', '0') != '0' else 'off':>5} "
            f"{(f'{offset:+.2f}s' if isinstance(offset, int | float) else '?'):>7}  "
            f"{'provisioned' if f.get('datacloud_cluster') == 'yes' else 'new'}"
        )
    return "\n".join(rows)


def check(ctx: StageContext, gathered: list[dict]) -> dict:
    facts = {g["node"]: g["facts"] for g in gathered if g}
    log.info("preflight | Facts |\n%s", table(ctx.inv, facts))
    found = problems(ctx.inv, facts)
    try:  # the notebook image must run the same Spark and Python as the executors
        check_versions()
    except ImageVersionError as exc:
        found.append(str(exc))
    from datacloud.stages import STAGES

    params = getattr(ctx, "params", None)
    stages = tuple(getattr(params, "stages", ()) or STAGES)
    found.extend(image_problems(ctx.inv, stages))
    found.extend(exposure_problems(ctx.inv, stages))
    for w in ctx.inv.warnings:
        log.warning("preflight | Warning | %s", w)
    for p in found:
        log.error("preflight | Problem | %s", p)
    if found:
        raise PreflightError(" ".join(found))
    log.info("preflight | Check | %d node(s) fit", len(ctx.inv.nodes))
    return outcome("preflight", "check", [], ctx.dry_run, nodes=len(ctx.inv.nodes))


STEPS = [Step("gather", gather, nodes=all_nodes), Step("check", check, previous=True)]
