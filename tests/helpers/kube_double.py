"""A recording test DOUBLE of datacloud.kube.Kube, and a stage context that hands it out.

It keeps the objects and releases "applied" in memory, answers like Kube
(changed/unchanged, helm upgrade True/False), records every call in order, and
lets a test script what the cluster reports (``status``: a list of objects
returned one per get, e.g. a CephCluster going from HEALTH_ERR to HEALTH_OK).
Secrets come back base64-encoded like the API server returns them. It stands
in for kubectl/helm on a control plane, which cannot run here.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from datacloud.kube import ApplyResult, Kube, object_id
from datacloud.remote import Result

KIND_ALIASES = {"persistentvolumeclaim": "PersistentVolumeClaim", "pod": "Pod", "secret": "Secret", "service": "Service"}


@dataclass
class KubeDoubleState:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    releases: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    status: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # (kind, name) -> scripted answers
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    pod_phase: str = "Succeeded"
    claim_phase: str = "Bound"
    # what `kubectl get pods|nodes -o json` answers (the pods' and nodes' status, for Kube.why_waiting)
    listed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class RecordingKubeDouble:
    def __init__(self, state: KubeDoubleState, dry_run: bool = False, transport: Any = None) -> None:
        self.state = state
        self.dry_run = dry_run
        self.remote = SimpleNamespace(
            connect=lambda: SimpleNamespace(get_transport=lambda: transport), node=SimpleNamespace(name="cp")
        )

    def __enter__(self) -> RecordingKubeDouble:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def apply(self, objects: list[dict[str, Any]]) -> ApplyResult:
        result = ApplyResult(dry_run=self.dry_run)
        for obj in objects:
            oid = object_id(obj)
            self.state.calls.append(("apply", oid))
            if self.state.objects.get(oid) == obj:
                result.unchanged.append(oid)
                continue
            result.changed.append(oid)
            if not self.dry_run:
                self.state.objects[oid] = copy.deepcopy(obj)
        return result

    def helm_upgrade(self, release: Any, *, timeout_s: int = 900) -> bool:
        self.state.calls.append(("helm", release.name, release.version))
        want = (release.chart, release.version, json.dumps(release.values, sort_keys=True))
        if self.state.releases.get(release.name) == want:
            return False
        if not self.dry_run:
            self.state.releases[release.name] = want
        return True

    def rollout_status(self, kind: str, name: str, *, namespace: str, timeout_s: int = 300) -> None:
        self.state.calls.append(("rollout", kind, name))

    why_waiting = Kube.why_waiting  # the real diagnosis, over this double's kubectl

    def wait(self, kind: str, name: str | None = None, **kw: Any) -> None:
        self.state.calls.append(("wait", kind, name))

    def _find(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        real = KIND_ALIASES.get(kind, kind)
        for obj in self.state.objects.values():
            meta = obj["metadata"]
            if obj["kind"].lower() == real.lower() and meta["name"] == name and meta.get("namespace") == namespace:
                return obj
        return None

    def get_json(self, kind: str, name: str | None = None, *, namespace: str | None = None, selector: str | None = None) -> Any:
        self.state.calls.append(("get", kind, name))
        scripted = self.state.status.get((kind, name))
        if scripted:
            return scripted.pop(0) if len(scripted) > 1 else scripted[0]
        obj = self._find(kind, name or "", namespace)
        if obj is None:
            return None
        obj = copy.deepcopy(obj)
        if obj["kind"] == "Secret":
            obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData", {}).items()}
        if obj["kind"] == "PersistentVolumeClaim":
            obj["status"] = {"phase": self.state.claim_phase}
        return obj

    def exists(self, kind: str, name: str, *, namespace: str | None = None) -> bool:
        return self.get_json(kind, name, namespace=namespace) is not None

    def kubectl(self, *args: str, **kw: Any) -> Result:
        self.state.calls.append(("kubectl", *args))
        if args[0] == "get" and args[1] in self.state.listed:
            return Result(0, json.dumps({"items": self.state.listed[args[1]]}), "")
        if args[0] == "wait" and args[1] == "pod":
            return Result(0 if self.state.pod_phase == "Succeeded" else 1, "", "")
        if args[0] == "delete":
            name, ns = args[2], args[args.index("--namespace") + 1]
            for oid in [
                o
                for o, obj in self.state.objects.items()
                if obj["metadata"]["name"] == name and obj["metadata"].get("namespace") == ns
            ]:
                del self.state.objects[oid]
        return Result(0, "", "")


@dataclass
class StageContextDouble:
    """What a step gets (datacloud.stages._common.StageContext), with the Kube double."""

    inv: Any
    state: KubeDoubleState
    dry_run: bool = False
    transport: Any = None

    def kube(self) -> RecordingKubeDouble:
        return RecordingKubeDouble(self.state, self.dry_run, self.transport)
