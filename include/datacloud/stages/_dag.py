"""Turn the stage modules into TaskGroups (used by dags/provision_platform.py).

Parse-time cheap: this builds operators only; inventories, connections and
nodes are read when the tasks run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, TaskGroup, chain, get_current_context, task

from datacloud import config
from datacloud.dag_defaults import NODE_TASK_RETRIES
from datacloud.stages import STAGES, stage_module

# Per-node tasks run in this pool, capped per run as well. Task code has no
# metadata-DB access in Airflow 3, so the pool is created outside the DAG:
# `./dev up` does it through the REST API; on another Airflow run once
# `airflow pools set datacloud_nodes 10 "datacloud per-node tasks"` (docs/operations.md).
NODES_POOL = config.NODES_POOL
MAX_PARALLEL_NODES = config.NODES_POOL_SLOTS

# The longest a provisioning step may run before Airflow stops it (and retries it): its
# waits are 30 minutes by default (Ceph health, MongoDB ready, one SSH command), a step
# may chain a few of them. Listing the nodes takes seconds.
STEP_TIMEOUT = timedelta(hours=2)
NODE_LIST_TIMEOUT = timedelta(minutes=10)


def asset(stage: str) -> Asset:
    return Asset(f"datacloud://platform/{stage}")


def _inventory_param(default_inventory: str) -> Param:
    return Param(
        default_inventory,
        type="string",
        title="Inventory file",
        minLength=1,
        maxLength=256,
        pattern=r"^(?!.*\.\.)/?[A-Za-z0-9_][A-Za-z0-9_./-]*$",
        description="Path of the inventory YAML; relative paths start at the project folder.",
    )


def teardown_params(default_inventory: str = "inventory.yaml") -> dict[str, Param]:
    """Params of platform_teardown: every one with a type, a title and a description (the trigger form)."""
    return {
        "inventory": _inventory_param(default_inventory),
        "confirm": Param(
            "",
            type="string",
            title="Type the cluster name to confirm",
            maxLength=63,
            description="Must equal the inventory's cluster.name; anything else fails at once and changes nothing.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Connect and log what would be removed from each node; remove nothing.",
        ),
    }


def provision_params(default_inventory: str = "inventory.yaml") -> dict[str, Param]:
    from datacloud.inventory import K8S_VERSION

    stages = [s for s in STAGES if _steps(s)]
    return {
        "inventory": _inventory_param(default_inventory),
        "stages": Param(
            stages,
            type="array",
            title="Stages to run",
            items={"type": "string", "enum": stages},
            examples=stages,
            uniqueItems=True,
            description="Stages not listed are skipped; the order is always the platform's.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Connect, gather facts and log what each stage would change; change nothing.",
        ),
        "kubernetes_version": Param(
            None,
            type=["null", "string"],  # optional: the form does not demand a value
            title="Kubernetes version",
            pattern=f"^(|{K8S_VERSION.pattern[1:-1]})$",
            description="Empty: the inventory's cluster.kubernetes_version.",
        ),
    }


def _module(stage: str):
    if stage in STAGES:
        return stage_module(stage)
    from datacloud.stages._common import stage_steps_module

    return stage_steps_module(stage)


def _steps(stage: str) -> list[Any]:
    module = _module(stage)
    return list(getattr(module, "STEPS", []) or []) if module is not None else []


def _selected(stage: str, params: Any) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from datacloud.errors import fail_fast
    from datacloud.inventory import KUBERNETES_RELEASES, kubernetes_release_exists
    from datacloud.stages._common import ParamsError, RunParams

    with fail_fast():
        run = RunParams.from_params(params)
        # the Param overrides the inventory's version, so it must name a real release too
        if run.kubernetes_version and not kubernetes_release_exists(run.kubernetes_version):
            newest = ", ".join(f"1.{m}.{p}" for m, p in KUBERNETES_RELEASES.items())
            raise ParamsError(
                f"Param kubernetes_version {run.kubernetes_version} is not a Kubernetes release the platform knows "
                f"(up to {newest}); leave it empty for the inventory's."
            )
        chosen = run.stages
    if stage in STAGES and stage not in chosen:
        raise AirflowSkipException(f"stage {stage} is not selected in this run")


def _run_single(stage: str, step: str, previous: Any = None) -> dict:
    from datacloud.errors import fail_fast
    from datacloud.stages._common import run_step

    params = get_current_context()["params"]
    _selected(stage, params)
    with fail_fast():
        return run_step(stage, step, params, previous=previous)


def _run_node(stage: str, step: str, node: str) -> dict:
    from datacloud.errors import fail_fast
    from datacloud.stages._common import run_step

    context = get_current_context()
    context["node_name"] = node  # type: ignore[typeddict-unknown-key]  # for map_index_template
    params = context["params"]
    _selected(stage, params)
    with fail_fast():
        return run_step(stage, step, params, node=node)


def _node_list(stage: str, step: str) -> list[str]:
    from datacloud.errors import fail_fast
    from datacloud.stages._common import step_nodes

    params = get_current_context()["params"]
    _selected(stage, params)
    with fail_fast():
        return step_nodes(stage, step, params)


def stage_group(stage: str) -> TaskGroup | None:
    """The TaskGroup of one stage (None while the stage has no STEPS)."""
    steps = _steps(stage)
    if not steps:
        return None
    module = _module(stage)
    doc = (module.__doc__ or stage).strip().splitlines()[0]
    with TaskGroup(group_id=stage, tooltip=doc) as group:
        previous_out = None
        tasks = []
        for i, step in enumerate(steps):
            outlets = [asset(stage)] if i == len(steps) - 1 else []
            if step.nodes is not None:
                nodes = task(task_id=f"{step.name}_nodes", trigger_rule="none_failed", execution_timeout=NODE_LIST_TIMEOUT)(
                    _node_list
                )(stage, step.name)
                if tasks:
                    tasks[-1] >> nodes
                mapped = (
                    task(
                        task_id=step.name,
                        trigger_rule="none_failed",
                        pool=NODES_POOL,
                        max_active_tis_per_dagrun=MAX_PARALLEL_NODES,
                        outlets=outlets,
                        map_index_template="{{ node_name }}",
                        **NODE_TASK_RETRIES,
                        execution_timeout=STEP_TIMEOUT,
                    )(_run_node)
                    .partial(stage=stage, step=step.name)
                    .expand(node=nodes)
                )
                tasks += [nodes, mapped]
                previous_out = mapped
            else:
                kwargs = {"previous": previous_out} if step.previous else {}
                single = task(
                    task_id=step.name,
                    trigger_rule="none_failed",
                    outlets=outlets,
                    **NODE_TASK_RETRIES,
                    execution_timeout=STEP_TIMEOUT,
                )(_run_single)(stage, step.name, **kwargs)
                if tasks:
                    tasks[-1] >> single
                tasks.append(single)
                previous_out = single
    return group


def stage_groups(stages: tuple[str, ...] = STAGES) -> list[TaskGroup]:
    """Every stage that has STEPS, as TaskGroups chained in platform order."""
    groups = [g for g in (stage_group(s) for s in stages) if g is not None]
    chain(*groups)
    return groups
