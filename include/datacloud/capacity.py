"""Capacity planning: what the platform requests, placed on the inventory's nodes.

The catalogue below lists every long-running pod the platform installs, with
requests read from the inventory's component settings (the same numbers the
manifests use). ``plan()`` places them the way the scheduler would (control
plane pods on the control plane, DaemonSets everywhere, members of one replica
set on different nodes, the rest on the emptiest node) and checks two rules:

* every node fits: requests <= allocatable (kubelet reservations subtracted);
* the platform leaves room for work: total requests <= max_platform_share of
  allocatable memory (default 60 %), the rest being for Spark executors and
  notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datacloud.errors import UserError
from datacloud.inventory import Inventory, Node, Resources, allocatable


class CapacityError(UserError):
    """The platform does not fit the inventory's machines."""


@dataclass(frozen=True)
class Workload:
    component: str  # stage that installs it: kubernetes, network, storage, mongo, ...
    name: str
    replicas: int
    cpu_m: int
    memory_mb: int
    placement: str = "any"  # any | control-plane | every-node
    spread: bool = False  # replicas on distinct nodes (anti-affinity)

    @classmethod
    def of(cls, component: str, name: str, replicas: int, res: Resources, **kw: object) -> Workload:
        return cls(component, name, replicas, res.cpu_m, res.memory_mb, **kw)  # type: ignore[arg-type]


def catalogue(inv: Inventory) -> list[Workload]:
    """Every platform pod and its requests, in stage order."""
    c = inv.components
    out: list[Workload] = [
        # kubeadm static pods and add-ons (kubeadm's own requests; memory as observed on small clusters)
        Workload("kubernetes", "kube-apiserver", 1, 250, 512, placement="control-plane"),
        Workload("kubernetes", "etcd", 1, 100, 256, placement="control-plane"),
        Workload("kubernetes", "kube-controller-manager", 1, 200, 128, placement="control-plane"),
        Workload("kubernetes", "kube-scheduler", 1, 100, 64, placement="control-plane"),
        Workload("kubernetes", "kube-proxy", 1, 50, 64, placement="every-node"),
        Workload("kubernetes", "coredns", 2, 100, 70, spread=True),
        Workload("network", "calico-node", 1, 150, 192, placement="every-node"),
        Workload("network", "calico-kube-controllers", 1, 50, 64),
        Workload("network", "tigera-operator", 1, 50, 96),
    ]
    s = c.storage
    if inv.storage_backend == "rook-ceph":
        osds = sum(len(n.ceph_disks) for n in inv.ceph_nodes)
        out += [
            Workload.of("storage", "rook-ceph-operator", 1, s.operator),
            Workload.of("storage", "ceph-mon", inv.mon_count, s.mon, spread=True),
            Workload.of("storage", "ceph-mgr", 1, s.mgr),
            Workload.of("storage", "ceph-mds", 2, s.mds, spread=True),
            Workload.of("storage", "csi-rbdplugin", 1, s.csi_plugin, placement="every-node"),
            Workload.of("storage", "csi-cephfsplugin", 1, s.csi_plugin, placement="every-node"),
            Workload.of("storage", "csi-rbdplugin-provisioner", 2, s.csi_provisioner, spread=True),
            Workload.of("storage", "csi-cephfsplugin-provisioner", 2, s.csi_provisioner, spread=True),
        ]
        # OSDs run where their disks are; modelled per node below.
        # ceph-exporter runs beside the Ceph daemons; modelled on every OSD node.
        for n in inv.ceph_nodes:
            out.append(Workload.of("storage", f"ceph-osd@{n.name}", len(n.ceph_disks), s.osd, placement=f"node:{n.name}"))
            out.append(Workload.of("storage", f"ceph-exporter@{n.name}", 1, s.exporter, placement=f"node:{n.name}"))
        assert osds == sum(w.replicas for w in out if w.name.startswith("ceph-osd@"))
    else:
        out.append(Workload.of("storage", "local-path-provisioner", 1, s.local_path))

    m = c.mongo
    out += [
        Workload.of("mongo", "percona-server-mongodb-operator", 1, m.operator),
        Workload.of("mongo", "mongod-cfg", m.config_replicas, m.config, spread=True),
    ]
    out += [Workload.of("mongo", f"mongod-rs{i}", m.replicas, m.shard, spread=True) for i in range(m.shards)]
    out.append(Workload.of("mongo", "mongos", m.mongos, m.router, spread=True))

    sp = c.spark
    out += [
        Workload.of("spark", "spark-operator-controller", 1, sp.operator),
        Workload.of("spark", "spark-operator-webhook", 1, sp.operator),
        Workload.of("spark", "spark-history-server", 1, sp.history_server),
    ]
    j = c.jupyter
    out += [Workload.of("jupyter", "hub", 1, j.hub), Workload.of("jupyter", "proxy", 1, j.proxy)]
    mo = c.monitoring
    out += [
        Workload.of("monitoring", "prometheus", 1, mo.prometheus),
        Workload.of("monitoring", "alertmanager", 1, mo.alertmanager),
        Workload.of("monitoring", "grafana", 1, mo.grafana),
        Workload.of("monitoring", "prometheus-operator", 1, mo.operator),
        Workload.of("monitoring", "kube-state-metrics", 1, mo.kube_state_metrics),
        Workload.of("monitoring", "node-exporter", 1, mo.node_exporter, placement="every-node"),
        # one exporter per MongoDB target: mongos, the config servers and every shard
        Workload.of("monitoring", "mongodb-exporter", m.shards + 2, mo.mongodb_exporter),
        Workload.of("monitoring", "headlamp", 1, mo.headlamp),
    ]
    return out


@dataclass
class NodeLoad:
    node: Node
    alloc_cpu_m: int
    alloc_memory_mb: int
    cpu_m: int = 0
    memory_mb: int = 0
    pods: list[str] = field(default_factory=list)

    @property
    def memory_share(self) -> float:
        return self.memory_mb / self.alloc_memory_mb if self.alloc_memory_mb > 0 else float("inf")

    @property
    def fits(self) -> bool:
        return self.cpu_m <= self.alloc_cpu_m and self.memory_mb <= self.alloc_memory_mb


@dataclass
class Plan:
    inventory: Inventory
    nodes: list[NodeLoad]
    by_component: dict[str, tuple[int, int]]  # component -> (cpu_m, memory_mb)
    problems: list[str]

    @property
    def total_alloc_memory_mb(self) -> int:
        return sum(n.alloc_memory_mb for n in self.nodes if n.node.schedulable or n.node.is_control_plane)

    @property
    def total_memory_mb(self) -> int:
        return sum(m for _, m in self.by_component.values())

    @property
    def platform_share(self) -> float:
        return self.total_memory_mb / self.total_alloc_memory_mb

    def share_of(self, *components: str) -> float:
        return sum(self.by_component.get(c, (0, 0))[1] for c in components) / self.total_alloc_memory_mb

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        inv = self.inventory
        lines = [
            f"Capacity | cluster {inv.cluster.name}: {len(inv.nodes)} nodes, storage {inv.storage_backend}, "
            f"mongo {inv.components.mongo.shards} shard(s) x {inv.components.mongo.replicas} + config x "
            f"{inv.components.mongo.config_replicas}, mongos x {inv.components.mongo.mongos}",
            f"{'node':<16}{'roles':<24}{'cpu req/alloc (m)':>20}{'mem req/alloc (MiB)':>22}{'mem %':>8}",
        ]
        for n in self.nodes:
            lines.append(
                f"{n.node.name:<16}{','.join(n.node.roles):<24}{f'{n.cpu_m}/{n.alloc_cpu_m}':>20}"
                f"{f'{n.memory_mb}/{n.alloc_memory_mb}':>22}{n.memory_share * 100:>7.1f}%"
            )
        lines.append(f"{'component':<16}{'cpu (m)':>12}{'memory (MiB)':>16}{'% of alloc mem':>18}")
        for comp, (cpu, mem) in self.by_component.items():
            lines.append(f"{comp:<16}{cpu:>12}{mem:>16}{mem / self.total_alloc_memory_mb * 100:>17.1f}%")
        cap = inv.components.capacity.max_platform_share
        lines.append(
            f"platform total: {self.total_memory_mb} MiB of {self.total_alloc_memory_mb} MiB allocatable "
            f"({self.platform_share * 100:.1f} %, budget {cap * 100:.0f} %); storage + mongo "
            f"{self.share_of('storage', 'mongo') * 100:.1f} %"
        )
        lines.extend(f"warning: {w}" for w in inv.warnings)
        lines.extend(f"problem: {p}" for p in self.problems)
        lines.append("result: fits" if self.ok else "result: does NOT fit")
        return "\n".join(lines)


def plan(inv: Inventory) -> Plan:
    loads = []
    for n in inv.nodes:
        cpu, mem = allocatable(n)
        loads.append(NodeLoad(n, cpu, mem))
    by_name = {ld.node.name: ld for ld in loads}
    schedulable = [ld for ld in loads if ld.node.schedulable]
    problems: list[str] = []
    by_component: dict[str, tuple[int, int]] = {}

    def put(ld: NodeLoad, w: Workload, i: int) -> None:
        ld.cpu_m += w.cpu_m
        ld.memory_mb += w.memory_mb
        ld.pods.append(f"{w.name}-{i}")
        cpu, mem = by_component.get(w.component, (0, 0))
        by_component[w.component] = (cpu + w.cpu_m, mem + w.memory_mb)

    work = catalogue(inv)
    # Fixed placements first, then the biggest replicated pods, like a packer would.
    fixed = [w for w in work if w.placement != "any"]
    free = sorted((w for w in work if w.placement == "any"), key=lambda w: -w.memory_mb)
    for w in fixed:
        if w.placement == "control-plane":
            targets = [by_name[inv.control_plane.name]]
        elif w.placement == "every-node":
            targets = loads
        else:
            targets = [by_name[w.placement.removeprefix("node:")]]
        for ld in targets:
            for i in range(w.replicas if w.placement.startswith("node:") else 1):
                put(ld, w, i)
    for w in free:
        used: set[str] = set()
        for i in range(w.replicas):
            candidates = [ld for ld in schedulable if not (w.spread and ld.node.name in used)]
            if not candidates:
                problems.append(
                    f"{w.component}: {w.name} needs {w.replicas} replicas on different nodes but only "
                    f"{len(schedulable)} node(s) run workloads; lower the replica count or add workers"
                )
                break
            best = max(candidates, key=lambda ld: (ld.alloc_memory_mb - ld.memory_mb, ld.alloc_cpu_m - ld.cpu_m))
            put(best, w, i)
            used.add(best.node.name)

    for ld in loads:
        if ld.memory_mb > ld.alloc_memory_mb:
            problems.append(
                f"{ld.node.name}: platform pods request {ld.memory_mb} MiB but only {ld.alloc_memory_mb} MiB is allocatable "
                f"on {ld.node.memory_gb:g} GB; add memory, add nodes or shrink components"
            )
        if ld.cpu_m > ld.alloc_cpu_m:
            problems.append(
                f"{ld.node.name}: platform pods request {ld.cpu_m}m CPU but only {ld.alloc_cpu_m}m is allocatable; "
                "add CPUs, add nodes or shrink components"
            )
    result = Plan(inv, loads, by_component, problems)
    cap = inv.components.capacity.max_platform_share
    if result.platform_share > cap:
        problems.append(
            f"the platform requests {result.platform_share * 100:.1f} % of allocatable memory, over the "
            f"{cap * 100:.0f} % budget (components.capacity.max_platform_share) that keeps room for Spark executors "
            "and notebooks; use fewer mongo shards, smaller component requests or more memory"
        )
    return result


def check(inv: Inventory) -> Plan:
    """The plan, or CapacityError with the first problem when it does not fit."""
    result = plan(inv)
    if result.problems:
        error = CapacityError(result.problems[0] + ".")
        error.plan = result  # type: ignore[attr-defined]
        raise error
    return result
