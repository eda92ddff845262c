"""Rendering: Jinja-templated YAML under manifests/ into Kubernetes objects.

Every stage that applies something to the cluster exposes ``render(inv)``
returning :class:`Rendered`; ``render_all`` writes them as
``OUT/<stage>/<file>.yaml`` (objects), ``OUT/<stage>/values-<release>.yaml``
(Helm values) and ``OUT/charts.yaml`` (chart, repo and pinned version per release).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from datacloud.config import MANIFESTS_DIR
from datacloud.inventory import Inventory
from datacloud.stages import STAGES, stage_module


@dataclass(frozen=True)
class Release:
    """One Helm release: chart coordinates pinned in manifests/versions.yaml."""

    name: str
    namespace: str
    chart: str
    repo: str
    version: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rendered:
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # file stem -> objects
    releases: list[Release] = field(default_factory=list)

    def all_objects(self) -> list[dict[str, Any]]:
        return [o for objs in self.objects.values() for o in objs]


@functools.cache
def versions() -> dict[str, Any]:
    """manifests/versions.yaml, the single place for chart, image and tool versions."""
    return yaml.safe_load((MANIFESTS_DIR / "versions.yaml").read_text())


def kubernetes_pins() -> dict[str, Any]:
    """The ``kubernetes`` block of versions.yaml: Kubernetes, its packages, helm, their apt repositories and keys."""
    return versions()["kubernetes"]


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(MANIFESTS_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML  # noqa: S701
    )
    env.filters["to_yaml"] = lambda v: yaml.safe_dump(v, default_flow_style=True, sort_keys=False).strip()
    env.filters["to_json"] = lambda v: __import__("json").dumps(v)
    return env


def render_text(template: str, **context: Any) -> str:
    return _env().get_template(template).render(versions=versions(), **context)


def render_template(template: str, **context: Any) -> list[dict[str, Any]]:
    """Render manifests/<template> and parse every YAML document in it."""
    return [d for d in yaml.safe_load_all(render_text(template, **context)) if d]


def render_stage(name: str, inv: Inventory) -> Rendered:
    module = stage_module(name)
    if module is None or not hasattr(module, "render"):
        return Rendered()
    return module.render(inv)


def render_all(inv: Inventory, out: Path) -> dict[str, Rendered]:
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Rendered] = {}
    charts = []
    for name in STAGES:
        rendered = render_stage(name, inv)
        results[name] = rendered
        stage_dir = out / name
        stage_dir.mkdir(exist_ok=True)
        for old in stage_dir.glob("*.yaml"):
            old.unlink()
        for stem, objects in rendered.objects.items():
            (stage_dir / f"{stem}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
        for rel in rendered.releases:
            (stage_dir / f"values-{rel.name}.yaml").write_text(yaml.safe_dump(rel.values, sort_keys=False))
            charts.append(
                {
                    "stage": name,
                    "release": rel.name,
                    "namespace": rel.namespace,
                    "chart": rel.chart,
                    "repo": rel.repo,
                    "version": rel.version,
                }
            )
    (out / "charts.yaml").write_text(yaml.safe_dump({"releases": charts}, sort_keys=False))
    return results


def namespace_policies(
    inv: Inventory,
    namespace: str,
    *,
    peers_cluster_wide: bool = False,
    client_port: int | None = None,
    client_namespaces: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Default-deny NetworkPolicies for a namespace we create, with the explicit allows it needs."""
    return render_template(
        "common/namespace-policies.yaml.j2",
        namespace=namespace,
        pod_cidr=str(inv.cluster.pod_cidr),
        service_cidr=str(inv.cluster.service_cidr),
        node_subnet=str(inv.network.subnet),
        peers_cluster_wide=peers_cluster_wide,
        client_port=client_port,
        client_namespaces=list(client_namespaces),
    )
