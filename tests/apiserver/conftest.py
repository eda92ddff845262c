"""Package fixtures (stopped after the last test here): one real API server for tests/apiserver, the chart CRDs installed, namespaces created.

The server needs the binaries ``./dev setup`` builds; without them every test here
fails (never skips) with the sentence that says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.apiserver import platform
from tests.helpers.apiserver import ApiServer, BinariesMissing, KubeBinaries

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="package")
def apiserver() -> Iterator[ApiServer]:
    try:
        bins, missing = KubeBinaries.find(), ""
    except BinariesMissing as exc:
        bins, missing = None, str(exc)
    if bins is None:
        pytest.fail(f"No real kube-apiserver for these tests: {missing}", pytrace=False)
    with ApiServer(bins) as server:
        TIMINGS.update({f"start {k}": v for k, v in server.startup_s.items()})
        yield server


@pytest.fixture(scope="package")
def crds(apiserver: ApiServer) -> dict[str, tuple[platform.ChartRender, dict[str, Any]]]:
    """Every CRD the pinned charts ship (with our values), installed and Established."""
    t0 = time.monotonic()
    found = platform.chart_crds(apiserver)
    TIMINGS["helm template (CRDs)"] = time.monotonic() - t0
    TIMINGS["install CRDs"] = platform.install_crds(apiserver, [crd for _render, crd in found.values()])
    return found


@pytest.fixture(scope="package")
def api_versions(apiserver: ApiServer, crds) -> list[str]:
    return platform.api_versions(apiserver)


@pytest.fixture(scope="package")
def namespaces(apiserver: ApiServer) -> set[str]:
    """The platform's namespaces, created for real as the stages create them (and the releases' own),
    each with the ``default`` ServiceAccount pod admission needs."""
    objs: dict[str, dict[str, Any]] = {}
    for inv_name in platform.INVENTORIES:
        for rendered in platform.stage_renders(inv_name).values():
            for obj in rendered.all_objects():
                if obj["kind"] == "Namespace":
                    objs.setdefault(obj["metadata"]["name"], obj)
    for _stage, rel in platform.all_releases():
        objs.setdefault(rel.namespace, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": rel.namespace}})
    platform.apply(apiserver, list(objs.values()), dry_run=False, check=True)
    for ns in {*objs, "default", "kube-system"}:
        apiserver.wait_for_service_account(ns)
    return set(objs)


@pytest.fixture(scope="package")
def chart_renders(apiserver: ApiServer, api_versions: list[str]) -> dict[tuple[str, str], platform.ChartRender]:
    """(inventory, release name) -> helm template of that release with that inventory's values."""
    jobs = [
        (inv_name, stage, rel)
        for inv_name in platform.INVENTORIES
        for stage, rendered in platform.stage_renders(inv_name).items()
        for rel in rendered.releases
    ]
    unique = {platform.release_key(rel): (stage, rel) for _inv, stage, rel in reversed(jobs)}  # same values: one render
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        renders = dict(
            zip(unique, pool.map(lambda sr: platform.helm_template(apiserver, *sr, api_versions), unique.values()), strict=True)
        )
    TIMINGS[f"helm template ({len(unique)} distinct releases)"] = time.monotonic() - t0
    namespaced = platform.namespaced_kinds(apiserver)
    for render in renders.values():
        render.objects = platform.in_release_namespace(render.objects, render.release.namespace, namespaced)
    return {(inv_name, rel.name): renders[platform.release_key(rel)] for inv_name, _s, rel in jobs}


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if TIMINGS:
        terminalreporter.write_line("apiserver fixture: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="package")
def rbac(apiserver: ApiServer, namespaces, chart_renders) -> set[str]:
    """The platform's RBAC objects (stages and charts, every inventory) applied for real; its ServiceAccounts."""
    objs: dict[str, dict[str, Any]] = {}
    for inv_name in platform.INVENTORIES:
        for obj in platform.rbac_objects(inv_name, chart_renders):
            objs.setdefault(platform.object_id(obj), obj)
    platform.apply(apiserver, list(objs.values()), dry_run=False, check=True)
    return platform.service_accounts(objs.values())
