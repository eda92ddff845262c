"""RecordingKubeDouble: a test double of datacloud.kube.Kube for the stage run functions.

Kubernetes cannot run here. This double keeps the objects "applied" in memory
(so a second identical apply is unchanged, as server-side apply is), records
every call in order, and answers reads from that state or from scripted replies.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datacloud.kube import ApplyResult, Kube, object_id
from datacloud.remote import Result


@dataclass
class RecordingKubeDouble:
    dry_run: bool = False
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    releases: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    # (kind, name) -> callable returning the object for get_json (scripted state over time)
    scripted: dict[tuple[str, str], Callable[[], Any]] = field(default_factory=dict)
    # first words of a kubectl call -> callable(args) returning Result
    kubectl_replies: list[tuple[tuple[str, ...], Callable[[tuple[str, ...]], Result]]] = field(default_factory=list)

    def apply(self, objects: list[dict[str, Any]]) -> ApplyResult:
        result = ApplyResult(dry_run=self.dry_run)
        for obj in objects:
            oid = object_id(obj)
            self.calls.append(("apply", oid))
            if self.objects.get(oid) == obj:
                result.unchanged.append(oid)
                continue
            result.changed.append(oid)
            if not self.dry_run:
                self.objects[oid] = json.loads(json.dumps(obj))
        return result

    def helm_upgrade(self, release: Any, **_: Any) -> bool:
        self.calls.append(("helm", f"{release.name}@{release.version}"))
        want = (release.chart, release.version, json.dumps(release.values, sort_keys=True))
        if self.releases.get(release.name) == want:
            return False
        if not self.dry_run:
            self.releases[release.name] = want
        return True

    def get_json(self, kind: str, name: str | None = None, *, namespace: str | None = None, selector: str | None = None) -> Any:
        self.calls.append(("get", f"{kind}/{namespace}/{name}"))
        if (kind, name) in self.scripted:
            return self.scripted[(kind, name)]()
        obj = self.objects.get(f"{kind.capitalize()}/{namespace + '/' if namespace else ''}{name}")
        if obj is None:
            return None
        if obj.get("kind") == "Secret" and "stringData" in obj:  # what the API server returns
            data = {k: base64.b64encode(v.encode()).decode() for k, v in obj["stringData"].items()}
            return {**{k: v for k, v in obj.items() if k != "stringData"}, "data": data}
        return obj

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, quiet: bool = False, timeout: float | None = None
    ) -> Result:
        self.calls.append(("kubectl", " ".join(args)))
        for prefix, reply in self.kubectl_replies:
            if args[: len(prefix)] == prefix:
                return reply(args)
        return Result(0, "", "")

    # the real diagnosis, over this double's kubectl (scripted `get pods`/`get nodes` replies)
    why_waiting = Kube.why_waiting

    def rollout_status(self, kind: str, name: str, *, namespace: str, timeout_s: int = 300) -> None:
        self.calls.append(("rollout", f"{kind}/{namespace}/{name}"))

    def wait(self, kind: str, name: str | None = None, **kw: Any) -> None:
        self.calls.append(("wait", f"{kind}/{name}"))

    def put_secret(self, namespace: str, name: str, **data: str) -> None:
        self.objects[f"Secret/{namespace}/{name}"] = {
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": data,
        }


class FakeClock:
    """Monotonic time that advances only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
