"""The pinned upstream charts (``../shared/charts``) and the CRDs they ship.

The archives are the ones the lab serves as its chart repository
(shared/charts/README.md): ``<chart>-<version>.tgz`` for every release a stage
renders. CRDs are read straight from the archives, without helm: the files under
``crds/`` and the CRD templates whose only template lines are whole-line
``{{ ... }}`` directives (Rook's ``{{- if .Values.crds.enabled }}`` wrapper, the
ceph-csi-operator label includes). tests/apiserver checks that this reading
equals what ``helm template --include-crds`` installs on a real API server.
"""

from __future__ import annotations

import functools
import re
import tarfile
from pathlib import Path
from typing import Any

import yaml

from datacloud.render import Release, render_stage
from datacloud.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]
CHARTS_DIR = ROOT.parent / "shared" / "charts"
_DIRECTIVE = re.compile(r"^\s*\{\{.*\}\}\s*$")


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """Safe YAML that reads a bare ``=`` as the string Go's YAML makes of it (some CRD enums hold it)."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def load_all(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=_Loader) if d]  # _Loader is a SafeLoader


def archive(chart: str, version: str) -> Path:
    """The archive of one pinned chart; AssertionError naming what is missing."""
    path = CHARTS_DIR / f"{chart.rsplit('/', 1)[-1]}-{version}.tgz"
    if not path.exists():
        raise AssertionError(f"chart archive {path} is missing: the pinned {chart} {version} is not in {CHARTS_DIR}")
    return path


def release_archive(release: Release) -> Path:
    return archive(release.chart, release.version)


@functools.cache
def platform_releases() -> tuple[Release, ...]:
    """Every chart release any stage renders (the Ceph and the local-path inventories together)."""
    from tests.helpers import datalayer_inventories as inventories

    seen: dict[tuple[str, str], Release] = {}
    for inv in (inventories.reference(), inventories.local_path()):
        for stage in STAGES:
            for rel in render_stage(stage, inv).releases:
                seen.setdefault((rel.name, rel.namespace), rel)
    return tuple(seen.values())


def _candidate_docs(path: Path) -> list[tuple[str, str]]:
    """(member, YAML text) of every document in the archive that may be a CRD."""
    out = []
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            if not member.isfile() or not member.name.endswith((".yaml", ".yml")):
                continue
            parts = member.name.split("/")
            if "crds" not in parts and "templates" not in parts:
                continue
            raw = tf.extractfile(member)
            text = raw.read().decode() if raw else ""
            if "CustomResourceDefinition" not in text:
                continue
            text = "\n".join(line for line in text.splitlines() if not _DIRECTIVE.match(line))
            if "{{" in text:
                continue  # a real template, not a CRD file
            out.extend((member.name, doc) for doc in re.split(r"(?m)^---\s*$", text) if "CustomResourceDefinition" in doc)
    return out


@functools.cache
def _index(path: Path) -> dict[str, list[str]]:
    """kind (as written anywhere in the document) -> candidate CRD documents of one archive."""
    index: dict[str, list[str]] = {}
    for _member, doc in _candidate_docs(path):
        for kind in set(re.findall(r"(?m)^\s+kind:\s*[\"']?([A-Za-z0-9]+)", doc)):
            index.setdefault(kind, []).append(doc)
    return index


@functools.cache
def crds_in(path: Path) -> tuple[dict[str, Any], ...]:
    """Every CustomResourceDefinition the archive ships (parsed)."""
    return tuple(d for _m, text in _candidate_docs(path) for d in load_all(text) if d.get("kind") == "CustomResourceDefinition")


@functools.cache
def crd_for(group: str, kind: str) -> dict[str, Any] | None:
    """The CRD of ``kind`` in API group ``group`` from the platform's pinned charts, or None."""
    for rel in platform_releases():
        for text in _index(release_archive(rel)).get(kind, []):
            for doc in load_all(text):
                spec = doc.get("spec") or {}
                if doc.get("kind") == "CustomResourceDefinition" and spec.get("group") == group and spec["names"]["kind"] == kind:
                    return doc
    return None


def version_schema(crd: dict[str, Any], version: str) -> dict[str, Any] | None:
    """openAPIV3Schema of a served version of the CRD, or None."""
    for v in crd["spec"]["versions"]:
        if v["name"] == version and v.get("served", False):
            return v["schema"]["openAPIV3Schema"]
    return None
