"""What every stage module uses: run parameters, the step contract, the stage context.

See the docstring of :mod:`datacloud.stages` for the contract itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datacloud import config
from datacloud.errors import UserError
from datacloud.inventory import DNS1123_LABEL, K8S_VERSION, Inventory, Node, load_inventory

log = logging.getLogger(__name__)

# An inventory path from the Params form: plain path characters only.
SAFE_PATH = re.compile(r"^/?[A-Za-z0-9_][A-Za-z0-9_./-]{0,255}$")


class ParamsError(UserError):
    """A value in the Params form is not acceptable."""


@dataclass(frozen=True)
class RunParams:
    """The Params of a provision_platform run, validated."""

    inventory: str = "inventory.yaml"
    stages: tuple[str, ...] = ()
    dry_run: bool = False
    kubernetes_version: str = ""
    confirm: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RunParams:
        from datacloud.stages import STAGES

        inventory = params.get("inventory") or "inventory.yaml"
        if not isinstance(inventory, str) or not SAFE_PATH.fullmatch(inventory) or ".." in inventory.split("/"):
            raise ParamsError(
                f"Param inventory {_short(inventory)} is not a plain file path; use letters, digits, '_', '-', '.' and '/' only."
            )
        stages = params.get("stages")
        if stages is None:
            stages = list(STAGES)
        if isinstance(stages, str) or not isinstance(stages, list | tuple):
            raise ParamsError(f"Param stages must be a list of stage names, got {_short(stages)}.")
        for s in stages:
            if s not in STAGES:
                raise ParamsError(f"Param stages contains {_short(s)}, which is not a stage; choose from {', '.join(STAGES)}.")
        dry_run = params.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ParamsError(f"Param dry_run must be true or false, got {_short(dry_run)}.")
        version = params.get("kubernetes_version") or ""
        if not isinstance(version, str) or (version and not K8S_VERSION.fullmatch(version)):
            raise ParamsError(
                f"Param kubernetes_version {_short(version)} is not a version like 1.34.2; leave it empty for the inventory's."
            )
        confirm = params.get("confirm") or ""
        if not isinstance(confirm, str) or (confirm and not DNS1123_LABEL.fullmatch(confirm)):
            raise ParamsError(f"Param confirm {_short(confirm)} is not a cluster name; type the cluster name exactly.")
        return cls(inventory=inventory, stages=tuple(stages), dry_run=dry_run, kubernetes_version=version, confirm=confirm)

    def load_inventory(self) -> Inventory:
        inv = load_inventory(config.resolve_inventory_path(self.inventory))
        if self.kubernetes_version and self.kubernetes_version != inv.cluster.kubernetes_version:
            cluster = inv.cluster.model_copy(update={"kubernetes_version": self.kubernetes_version})
            inv = inv.model_copy(update={"cluster": cluster})
        return inv


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


NodeFilter = Callable[[Inventory], list[Node]]


def all_nodes(inv: Inventory) -> list[Node]:
    return list(inv.nodes)


def worker_nodes(inv: Inventory) -> list[Node]:
    return list(inv.workers)


@dataclass(frozen=True)
class Step:
    """One task of a stage's TaskGroup.

    ``run(ctx)`` (or ``run(ctx, previous)``) runs once; with ``nodes`` set,
    ``run(ctx, node)`` runs once per node that ``nodes(inv)`` returns, as a
    mapped task capped by the nodes pool. It returns a JSON-able dict; the
    key ``changes`` (list of sentences) says what changed — empty means
    "unchanged". ``previous=True`` passes the result of the step before
    (a list for a mapped step) as the second argument.
    """

    name: str
    run: Callable[..., dict[str, Any]]
    nodes: NodeFilter | None = None
    previous: bool = False


@dataclass
class StageContext:
    """What a step gets: the inventory, the run parameters and ways to reach the nodes."""

    stage: str
    inv: Inventory
    params: RunParams
    _remotes: list = field(default_factory=list)

    @property
    def dry_run(self) -> bool:
        return self.params.dry_run

    @property
    def env(self) -> dict[str, str]:
        """Environment every script gets (DRY_RUN)."""
        return {"DRY_RUN": "1" if self.dry_run else "0"}

    def remote(self, node: Node | str, **kwargs: Any):
        from datacloud.remote import Remote

        r = Remote(self.inv, node, **kwargs)
        self._remotes.append(r)
        return r

    def kube(self):
        from datacloud.kube import Kube

        return Kube(self.inv, self.remote(self.inv.control_plane), dry_run=self.dry_run)

    def close(self) -> None:
        for r in self._remotes:
            r.close()
        self._remotes.clear()


def outcome(stage: str, step: str, changes: list[str], dry_run: bool, **extra: Any) -> dict[str, Any]:
    """The dict a step returns; logs 'unchanged' when nothing changed."""
    if changes:
        verb = "would change" if dry_run else "changed"
        log.info("%s | %s | %s %d thing(s)", stage, step, verb, len(changes))
        for c in changes:
            log.info("%s | %s |   %s", stage, step, c)
    else:
        log.info("%s | %s | unchanged", stage, step)
    return {"changes": list(changes), "dry_run": dry_run, **extra}


def stage_steps_module(stage: str):
    """The module of a stage in STAGES, or of another step module (e.g. teardown)."""
    import importlib

    if not re.fullmatch(r"[a-z_]+", stage):
        raise ValueError(f"bad stage name {stage!r}")
    return importlib.import_module(f"datacloud.stages.{stage}")


def run_step(
    stage: str, step_name: str, params: Mapping[str, Any], node: str | None = None, previous: Any = None
) -> dict[str, Any]:
    """Run one step outside Airflow scheduling concerns (the DAG's tasks call this)."""
    module = stage_steps_module(stage)
    step = next(s for s in module.STEPS if s.name == step_name)
    run_params = RunParams.from_params(params)
    inv = run_params.load_inventory()
    ctx = StageContext(stage=stage, inv=inv, params=run_params)
    try:
        args: list[Any] = [ctx]
        if step.nodes is not None:
            args.append(inv.node(node))
        if step.previous:
            # a mapped upstream step arrives as a lazy sequence of its results
            args.append(previous if previous is None or isinstance(previous, dict) else list(previous))
        return step.run(*args)
    finally:
        ctx.close()


def step_nodes(stage: str, step_name: str, params: Mapping[str, Any]) -> list[str]:
    module = stage_steps_module(stage)
    step = next(s for s in module.STEPS if s.name == step_name)
    inv = RunParams.from_params(params).load_inventory()
    return [n.name for n in step.nodes(inv)]
