"""Provisioning stages, one module per stage, in the order they run.

The contract (how ``dags/provision_platform.py`` turns a module into a TaskGroup)
--------------------------------------------------------------------------------

A stage module ``datacloud/stages/<name>.py`` (``name`` in :data:`STAGES`) may define:

* ``render(inv) -> datacloud.render.Rendered`` — the Kubernetes objects and Helm
  releases it applies (pure: no I/O), used by ``./dev render`` and by the stage.
* ``STEPS: list[datacloud.stages._common.Step]`` — the tasks of its TaskGroup, in
  order. A module with ``STEPS`` appears in the DAG automatically, in the
  position :data:`STAGES` gives it; nothing else needs editing. Each step is::

      Step("apply", run)                          # one task: run(ctx) -> dict
      Step("prep", run, nodes=all_nodes)          # mapped over nodes: run(ctx, node) -> dict
      Step("check", run, previous=True)           # run(ctx, previous) gets the step before's
                                                  # result (a list for a mapped step)

  ``ctx`` is a :class:`datacloud.stages._common.StageContext`: ``ctx.inv`` (the
  validated inventory, with the run's kubernetes_version), ``ctx.dry_run``,
  ``ctx.env`` (DRY_RUN for scripts), ``ctx.remote(node)`` (a
  :class:`datacloud.remote.Remote`) and ``ctx.kube()`` (a :class:`datacloud.kube.Kube`
  on the control plane: ``apply``, ``helm_upgrade``, ``wait``, ``rollout_status``,
  ``get_json``, ``exists``). Connections are closed after the step.

  A step returns ``datacloud.stages._common.outcome(stage, step, changes, dry_run, **facts)``:
  ``changes`` lists what changed (or would, in a dry run); empty logs "unchanged".
  It observes first and changes only what differs, so every retry is safe. With
  ``ctx.dry_run`` it changes nothing (``Kube`` and ``lib.sh``'s ``change`` honour it).
  Raise ``UserError`` for what the user must fix (no retries), anything else retries.

The DAG side (``datacloud.stages._dag``) makes every task ``trigger_rule=none_failed``,
skips a stage not chosen in the ``stages`` Param, maps per-node steps (one grid
entry per node name) in the pool ``datacloud_nodes``, and puts the Asset
``datacloud://platform/<stage>`` on the stage's last task.

Stages converge: they observe real state first and change only what differs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES: tuple[str, ...] = (
    "preflight",
    "gateway",
    "node_prep",
    "kubernetes",
    "network",
    "storage",
    "mongo",
    "spark",
    "jupyter",
    "monitoring",
    "verify",
)


def stage_module(name: str) -> ModuleType | None:
    """The module of a stage, or None while that stage has no module yet."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    try:
        return importlib.import_module(f"datacloud.stages.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"datacloud.stages.{name}":
            return None
        raise
