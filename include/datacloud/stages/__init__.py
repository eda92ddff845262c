"""Provisioning stages, one module per stage, in the order they run.

A stage module may define:

* ``render(inv) -> datacloud.render.Rendered`` — the Kubernetes objects and Helm
  releases it applies (pure: no I/O), used by ``./dev render`` and by the stage.
* the functions its TaskGroup in ``dags/provision_platform.py`` calls.

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
