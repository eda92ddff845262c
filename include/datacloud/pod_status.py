"""Why pods are not ready, in one line: what a wait that timed out adds to its error.

A rollout that never finishes says only "did not finish rolling out"; what the
administrator needs is the reason kubelet or the scheduler gave — a node under
disk pressure evicting everything, an image that cannot be pulled, a pod no node
can take. ``explain`` reads ``kubectl get pods,nodes -o json`` output and names
at most a few such reasons, bounded in length, never a Secret's value (pod status
messages carry none).
"""

from __future__ import annotations

from typing import Any

PRESSURES = ("DiskPressure", "MemoryPressure", "PIDPressure")
MAX_PODS = 3
MAX_MESSAGE = 160


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def node_problems(nodes: list[dict[str, Any]]) -> list[str]:
    """'n2 has DiskPressure', 'n3 is NotReady' for each node kubelet reports so."""
    out = []
    for node in nodes:
        name = node.get("metadata", {}).get("name", "?")
        conds = {c.get("type"): c.get("status") for c in node.get("status", {}).get("conditions", [])}
        bad = [p for p in PRESSURES if conds.get(p) == "True"]
        if conds.get("Ready") not in (None, "True"):
            bad.insert(0, "NotReady")
        if bad:
            out.append(f"node {name}: {', '.join(bad)}")
    return out


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why this pod is not ready, or None when it is (or has finished well)."""
    status = pod.get("status", {})
    phase = status.get("phase")
    if phase == "Succeeded":
        return None
    conds = {c.get("type"): c for c in status.get("conditions", [])}
    if phase == "Running" and conds.get("Ready", {}).get("status") == "True":
        return None
    name = pod.get("metadata", {}).get("name", "?")
    if status.get("reason"):  # Evicted, NodeLost, UnexpectedAdmissionError…
        return f"{name} {status['reason']}: {_short(status.get('message', ''))}"
    sched = conds.get("PodScheduled", {})
    if sched.get("status") == "False":
        return f"{name} unschedulable: {_short(sched.get('message', sched.get('reason', '')))}"
    for cs in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        state = cs.get("state", {})
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            return f"{name} {cs.get('name')} {waiting['reason']}: {_short(waiting.get('message', ''))}".rstrip(": ")
        if terminated and terminated.get("exitCode", 0) != 0:
            return f"{name} {cs.get('name')} exited {terminated.get('exitCode')} ({terminated.get('reason', '')})"
        last = cs.get("lastState", {}).get("terminated")
        if last and cs.get("restartCount", 0):
            return f"{name} {cs.get('name')} restarted {cs['restartCount']}× (last exit {last.get('exitCode')})"
    return f"{name} {phase or 'unknown phase'}"


def explain(pods: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> str:
    """One line: the nodes' pressures, then up to MAX_PODS pods' reasons ("" when nothing is wrong)."""
    parts = node_problems(nodes)
    problems = [p for p in (pod_problem(pod) for pod in pods) if p]
    parts += problems[:MAX_PODS]
    if len(problems) > MAX_PODS:
        parts.append(f"{len(problems) - MAX_PODS} more pod(s) not ready")
    return "; ".join(parts)
