"""pod_status.explain: the one line a timed-out wait adds to its error."""

from __future__ import annotations

from datacloud import pod_status


def _pod(name, phase="Pending", **status):
    return {"metadata": {"name": name}, "status": {"phase": phase, **status}}


def _waiting(reason, message=""):
    return [{"name": "main", "state": {"waiting": {"reason": reason, "message": message}}, "restartCount": 0}]


def test_ready_and_finished_pods_are_not_reasons():
    ready = _pod("a", "Running", conditions=[{"type": "Ready", "status": "True"}])
    assert pod_status.explain([ready, _pod("b", "Succeeded")], []) == ""


def test_each_kind_of_reason_is_named_as_kubelet_gave_it():
    pods = [
        _pod("pull", containerStatuses=_waiting("ImagePullBackOff", 'Back-off pulling image "x/y:1"')),
        _pod("crash", "Running", containerStatuses=[
            {"name": "main", "state": {"running": {}}, "restartCount": 4, "lastState": {"terminated": {"exitCode": 2}}}]),
        _pod("init", initContainerStatuses=[{"name": "setup", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]),
    ]  # fmt: skip
    assert pod_status.explain(pods, []) == (
        'pull main ImagePullBackOff: Back-off pulling image "x/y:1"; crash main restarted 4× (last exit 2); '
        "init setup exited 1 (Error)"
    )


def test_creating_containers_are_only_their_phase():
    assert pod_status.explain([_pod("new", containerStatuses=_waiting("ContainerCreating"))], []) == "new Pending"


def test_nodes_first_then_at_most_three_pods_and_a_count():
    nodes = [
        {"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        {"metadata": {"name": "n2"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "True"},
            {"type": "PIDPressure", "status": "False"}]}},
    ]  # fmt: skip
    pods = [_pod(f"p{i}", reason="Evicted", message="The node was low on resource: memory.") for i in range(5)]
    line = pod_status.explain(pods, nodes)
    assert line.startswith("node n1: NotReady; node n2: MemoryPressure; p0 Evicted: The node was low on resource: memory.;")
    assert line.endswith("p2 Evicted: The node was low on resource: memory.; 2 more pod(s) not ready")


def test_a_long_message_is_cut():
    line = pod_status.explain([_pod("p", reason="Evicted", message="x " * 500)], [])
    assert len(line) < pod_status.MAX_MESSAGE + 20 and line.endswith("…")
