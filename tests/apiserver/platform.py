"""What the later stages would apply, as the real API server of tests/helpers/apiserver.py sees it.

* every stage's own ``render(inv)`` (the objects of ``./dev render``), per inventory;
* everything the stages' writing steps hand to ``kube.apply`` / ``kube.helm_upgrade`` when
  they run (:func:`stage_runs`): the rendered objects plus what exists only at run time
  (the generated Secrets, the storage probe claims and pods, the Spark verification
  application, the Spark Connect token and the submitter's token Secret), captured by driving the real steps through the recording Kube double;
* every chart release rendered by ``helm template`` from the pinned archive in
  ``../shared/charts`` with the stage's values, ``--include-crds``, ``--skip-tests``
  and the server's ``--kube-version`` / ``--api-versions`` (what ``helm upgrade
  --install`` would send, hooks included);
* the CRDs those charts ship, installed for real (server-side apply), in stage order
  with Helm's rule for ``crds/`` folders: a CRD that exists is left as it is.

``dry_run`` is the stage's own apply (``kubectl apply --server-side``, the stage's
field manager) with ``--dry-run=server --validate=strict``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from datacloud.inventory import ImagesSettings, Inventory, parse_inventory
from datacloud.kube import FIELD_MANAGER, object_id
from datacloud.remote import Result
from datacloud.render import Release, Rendered, render_stage
from datacloud.stages import STAGES, stage_module
from tests.helpers import datalayer_inventories as inventories
from tests.helpers.apiserver import ApiServer
from tests.helpers.chart_crds import load_all, release_archive
from tests.helpers.kube_double import KubeDoubleState, RecordingKubeDouble


def three_nodes() -> Inventory:
    """The smallest Ceph layout, pulling our images from a registry (the spark stage runs only with one)."""
    registry = ImagesSettings(registry="registry.example.internal:5000/datacloud")
    return inventories.three_nodes().model_copy(update={"images": registry})


def flannel() -> Inventory:
    """The thesis cluster on the other CNI choice: flannel with the kube-network-policies agent."""
    data = inventories.reference_data()
    data.setdefault("network", {})["cni"] = "flannel"
    return parse_inventory(data, "flannel")


# Both storage paths and both CNIs: the smallest Ceph layout (3 Ceph disks on 3 nodes), the
# thesis cluster (Calico, Ceph on 4 nodes, 2 shards), the thesis cluster left with one Ceph
# disk (local-path) and the thesis cluster on flannel.
INVENTORIES: dict[str, Callable[[], Inventory]] = {
    "ceph-three-nodes": three_nodes,
    "reference": inventories.reference,
    "local-path": inventories.local_path,
    "flannel": flannel,
}
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
_SOURCE = re.compile(r"(?m)^# Source: (.+)$")


@functools.cache
def inventory(name: str) -> Inventory:
    return INVENTORIES[name]()


@functools.cache
def stage_renders(inv_name: str) -> dict[str, Rendered]:
    """Every stage's render for one inventory (stages without objects or releases left out)."""
    inv = inventory(inv_name)
    out = {}
    for stage in STAGES:
        rendered = render_stage(stage, inv)
        if rendered.objects or rendered.releases:
            out[stage] = rendered
    return out


# --- what the steps apply when they run ---

# The steps of the later stages that write to the cluster, in run order. Every other step
# of these stages only reads, waits or talks to the services (test_dry_run checks the
# steps' source for writes, so a new writing step fails until it is listed here).
WRITING_STEPS: dict[str, tuple[str, ...]] = {
    "network": ("install",),
    "storage": ("apply", "prove"),
    "mongo": ("apply",),
    "spark": ("apply", "verify"),
    "jupyter": ("apply", "admin"),
    "monitoring": ("apply",),
}
_VERIFY_APP_ID = "spark-0a1b2c3d4e5f"


@dataclass
class StageRun:
    """What one stage's writing steps applied (in order, as sent) and installed."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)

    def last_objects(self) -> list[dict[str, Any]]:
        """Each object once, as last applied (a Secret may be applied again with new data)."""
        latest = {object_id(o): o for o in self.objects}
        return list(latest.values())


class _CapturingKube(RecordingKubeDouble):
    """The recording Kube double (state shared across stages, so a Secret one stage writes is
    there for the next), keeping every object and release the steps send, and answering the
    few reads the writing steps wait on as a healthy cluster would."""

    def __init__(self, state: KubeDoubleState, run: StageRun) -> None:
        super().__init__(state)
        self.run = run

    def apply(self, objects: list[dict[str, Any]]):
        self.run.objects.extend(copy.deepcopy(o) for o in objects)
        return super().apply(objects)

    def helm_upgrade(self, release: Any, *, timeout_s: int = 900) -> bool:
        self.run.releases.append(release)
        return super().helm_upgrade(release, timeout_s=timeout_s)

    def get_json(self, kind: str, name: str | None = None, **kw: Any) -> Any:
        if kind == "sparkapplication":  # spark verify: the operator ran the application
            return {"status": {"applicationState": {"state": "COMPLETED"}, "sparkApplicationId": _VERIFY_APP_ID}}
        if kind == "sparkconnect":  # spark verify: the operator reports the Connect server ready
            return {"status": {"state": "Ready", "executors": {"running": 1}}}
        return super().get_json(kind, name, **kw)

    def kubectl(self, *args: str, **kw: Any) -> Result:
        if args[:2] == ("get", "--raw"):  # spark verify: the History Server lists the run
            return Result(0, json.dumps([{"id": _VERIFY_APP_ID, "attempts": [{"completed": True}]}]), "")
        if args[:1] == ("exec",):  # jupyter admin: the bootstrap script in the hub created the account
            return Result(0, "created\n", "")
        return super().kubectl(*args, **kw)


@dataclass
class _Context:
    inv: Inventory
    kube_double: _CapturingKube
    dry_run: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def kube(self) -> _CapturingKube:
        return self.kube_double


@functools.cache
def stage_runs(inv_name: str) -> dict[str, StageRun]:
    """stage -> what its writing steps apply and install, run in stage order on one (double) cluster."""
    inv, state, out = inventory(inv_name), KubeDoubleState(), {}
    for stage, step_names in WRITING_STEPS.items():
        run = out[stage] = StageRun()
        steps = {s.name: s for s in stage_module(stage).STEPS}
        for name in step_names:
            steps[name].run(_Context(inv, _CapturingKube(state, run)))
    return out


@dataclass
class ChartRender:
    stage: str
    release: Release
    crds: list[dict[str, Any]] = field(default_factory=list)
    crd_sources: dict[str, str] = field(default_factory=dict)  # CRD name -> "# Source:" path in the chart
    objects: list[dict[str, Any]] = field(default_factory=list)


def helm_template(server: ApiServer, stage: str, release: Release, api_versions: Iterable[str] = ()) -> ChartRender:
    """``helm template`` of one release from its pinned archive with the stage's values."""
    version = server.get_json("/version")["gitVersion"]
    res = server.helm(
        "template", release.name, str(release_archive(release)),
        "--namespace", release.namespace, "--values", "-", "--include-crds", "--skip-tests",
        "--kube-version", version, *[a for v in api_versions for a in ("--api-versions", v)],
        stdin=json.dumps(release.values),
    )  # fmt: skip
    out = ChartRender(stage, release)
    for chunk in re.split(r"(?m)^---\s*$", res.stdout):
        source = _SOURCE.search(chunk)
        for doc in load_all(chunk):
            if doc.get("kind") == "CustomResourceDefinition":
                out.crds.append(doc)
                out.crd_sources[doc["metadata"]["name"]] = source.group(1) if source else "?"
            else:
                out.objects.append(doc)
    return out


def release_key(release: Release) -> tuple[str, str, str, str, str]:
    """Two releases with this key render the same (helm template of one is enough)."""
    return release.name, release.namespace, release.chart, release.version, json.dumps(release.values, sort_keys=True)


def all_releases() -> list[tuple[str, Release]]:
    """(stage, release) of every release any inventory renders, first occurrence (stage order)."""
    seen: dict[tuple[str, str], tuple[str, Release]] = {}
    for inv_name in INVENTORIES:
        for stage, rendered in stage_renders(inv_name).items():
            for rel in rendered.releases:
                seen.setdefault((rel.name, rel.namespace), (stage, rel))
    return list(seen.values())


def chart_crds(server: ApiServer) -> dict[str, tuple[ChartRender, dict[str, Any]]]:
    """CRD name -> (the release render that ships it, the CRD), Helm's first-wins rule in stage order."""
    with ThreadPoolExecutor(4) as pool:
        renders = list(pool.map(lambda sr: helm_template(server, *sr), all_releases()))
    crds: dict[str, tuple[ChartRender, dict[str, Any]]] = {}
    for render in renders:
        for crd in render.crds:
            crds.setdefault(crd["metadata"]["name"], (render, crd))
    return crds


def install_crds(server: ApiServer, crds: list[dict[str, Any]], timeout_s: float = 240) -> float:
    """Server-side apply of the CRDs (strict), then wait until every one is Established; seconds taken."""
    t0 = time.monotonic()
    chunks = [crds[i::3] for i in range(3)]  # the server compiles schemas on both cores
    with ThreadPoolExecutor(len(chunks)) as pool:
        results = list(pool.map(lambda ch: apply(server, ch, dry_run=False, check=False), chunks))
    problems = [r.stderr.strip() for r in results if r.returncode != 0]
    if problems:
        raise AssertionError("the server refused chart CRDs:\n" + "\n".join(problems))
    names = {c["metadata"]["name"] for c in crds}

    def established() -> bool:
        listed = server.get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")["items"]
        ok = {
            c["metadata"]["name"]
            for c in listed
            if any(x["type"] == "Established" and x["status"] == "True" for x in (c.get("status") or {}).get("conditions") or [])
        }
        return names <= ok

    server.wait_for(established, f"{len(names)} CRDs to be Established", timeout_s, interval_s=0.5)
    return time.monotonic() - t0


def api_versions(server: ApiServer) -> list[str]:
    """What ``helm`` asks the cluster for: every group/version and group/version/Kind it serves."""
    out = set()
    core = server.get_json("/api")
    for v in core["versions"]:
        out.add(v)
        out.update(f"{v}/{r['kind']}" for r in server.get_json(f"/api/{v}")["resources"] if "/" not in r["name"])
    for group in server.get_json("/apis")["groups"]:
        for gv in group["versions"]:
            out.add(gv["groupVersion"])
            resources = server.get_json(f"/apis/{gv['groupVersion']}")["resources"]
            out.update(f"{gv['groupVersion']}/{r['kind']}" for r in resources if "/" not in r["name"])
    return sorted(out)


def namespaced_kinds(server: ApiServer) -> set[tuple[str, str]]:
    """(apiVersion, kind) of every namespaced resource the server serves (discovery)."""
    out = set()
    paths = [f"/api/{v}" for v in server.get_json("/api")["versions"]]
    paths += [f"/apis/{gv['groupVersion']}" for g in server.get_json("/apis")["groups"] for gv in g["versions"]]
    for path in paths:
        doc = server.get_json(path)
        out.update((doc["groupVersion"], r["kind"]) for r in doc["resources"] if r.get("namespaced") and "/" not in r["name"])
    return out


def in_release_namespace(objects: list[dict[str, Any]], namespace: str, namespaced: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """What Helm does: a namespaced object without a namespace goes into the release's namespace."""
    out = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in namespaced and not obj["metadata"].get("namespace"):
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        out.append(obj)
    return out


def apply(
    server: ApiServer,
    objects: list[dict[str, Any]],
    *,
    dry_run: bool = True,
    namespace: str | None = None,
    as_: str | None = None,
    check: bool = False,
):
    """``kubectl apply --server-side`` as the stages run it; ``--dry-run=server --validate=strict`` unless told."""
    args = ["apply", "--server-side", "--field-manager", FIELD_MANAGER, "--force-conflicts", "--validate=strict"]
    if dry_run:
        args.append("--dry-run=server")
    if namespace:
        args += ["--namespace", namespace]
    doc = "\n---\n".join(json.dumps(o) for o in objects)
    return server.kubectl(*args, "-f", "-", stdin=doc, as_=as_, check=check, timeout=300)


def rbac_objects(inv_name: str, chart_renders: dict[tuple[str, str], ChartRender]) -> list[dict[str, Any]]:
    """ServiceAccounts, Roles, bindings... of the stages and of the chart releases, for one inventory."""
    objs = [o for r in stage_renders(inv_name).values() for o in r.all_objects() if o["kind"] in RBAC_KINDS]
    for (name, _release), render in sorted(chart_renders.items()):
        if name == inv_name:
            objs += [o for o in render.objects if o["kind"] in RBAC_KINDS]
    return objs


def service_accounts(objs: Iterable[dict[str, Any]]) -> set[str]:
    """namespace/name of every ServiceAccount among the objects."""
    return {f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in objs if o["kind"] == "ServiceAccount"}


def can_i(server: ApiServer, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    """``kubectl auth can-i --as=system:serviceaccount:NS:NAME VERB RESOURCE`` (namespace None: all namespaces)."""
    ns_args = ["--all-namespaces"] if namespace is None else ["--namespace", namespace]
    resource, _, sub = resource.partition("/")  # kubectl reads TYPE/NAME: a subresource needs --subresource
    sub_args = [f"--subresource={sub}"] if sub else []
    ns, name = sa.split("/")
    res = server.kubectl(
        "auth", "can-i", verb, resource, *sub_args, *ns_args, as_=f"system:serviceaccount:{ns}:{name}", check=False
    )
    answer = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
    if answer not in ("yes", "no"):
        raise AssertionError(f"kubectl auth can-i {verb} {resource} as {sa}: {res.stdout.strip()} {res.stderr.strip()}")
    return answer == "yes"


def resource_groups(server: ApiServer) -> dict[str, set[str]]:
    """resource (plural, and plural.group) -> the API groups serving it (discovery)."""
    out: dict[str, set[str]] = {"users": {""}, "groups": {""}}  # impersonation targets: not served, but authorized
    paths = [("", f"/api/{v}") for v in server.get_json("/api")["versions"]]
    paths += [(g["name"], f"/apis/{gv['groupVersion']}") for g in server.get_json("/apis")["groups"] for gv in g["versions"]]
    for group, path in paths:
        for r in server.get_json(path)["resources"]:
            plural = r["name"].split("/")[0]
            out.setdefault(plural, set()).add(group)
            if group:
                out.setdefault(f"{plural}.{group}", set()).add(group)
    return out


def access_reviews(
    server: ApiServer, sa: str, checks: list[tuple[str, str, str | None]], groups: dict[str, set[str]]
) -> list[bool]:
    """The same question as ``kubectl auth can-i --as=SA`` for many checks in one kubectl call:
    SelfSubjectAccessReviews created while impersonating the ServiceAccount."""
    docs = []
    for verb, resource, namespace in checks:
        name, _, sub = resource.partition("/")
        plural = name.split(".")[0]
        if name == "*":
            group = "*"
        else:
            found = groups.get(name, set())
            if len(found) != 1:
                raise AssertionError(f"resource {name!r} is served by groups {sorted(found)}: qualify it as RESOURCE.GROUP")
            (group,) = found
        attrs = {"verb": verb, "resource": plural, "group": group, "namespace": namespace or ""}
        if sub:
            attrs["subresource"] = sub
        docs.append(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}}
        )
    ns, name = sa.split("/")
    res = server.kubectl(
        "create", "--validate=false", "-f", "-", "-o", "json",
        stdin="\n---\n".join(json.dumps(d) for d in docs), as_=f"system:serviceaccount:{ns}:{name}",
    )  # fmt: skip
    decoder, text, pos, answers = json.JSONDecoder(), res.stdout, 0, []
    while pos < len(text.rstrip()):
        while text[pos].isspace():
            pos += 1
        obj, pos = decoder.raw_decode(text, pos)
        answers.append(bool(obj["status"]["allowed"]))
    if len(answers) != len(checks):
        raise AssertionError(f"{len(checks)} access reviews for {sa}, {len(answers)} answers")
    return answers
