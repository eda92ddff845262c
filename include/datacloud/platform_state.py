"""What the platform looks like after provisioning: stages that ran, and service addresses.

Stages record here when they converged (``record_stage``); the Airflow plugin
reads the addresses for its navigation links, ``platform_health`` reads which
components exist and what to expect of them (for example the shard count).

The state is one JSON file, ``$DATACLOUD_DATA_DIR/platform/state.json``
(``DATACLOUD_PLATFORM_STATE`` overrides the path). Airflow runs on the admin
host (DESIGN.md), so its API server, scheduler and task processes all see the
same file. Writes are atomic (temp file + rename) under an exclusive lock, so
mapped tasks recording at the same time never lose each other's entries.
No secrets belong here: addresses, versions and counts only.

A stage records itself at its end, for example the monitoring stage::

    platform_state.record_stage(
        "monitoring",
        run_id=context["run_id"],
        services={"grafana": "http://192.168.1.1:30300", "prometheus": "http://192.168.1.1:30090",
                  "headlamp": "http://192.168.1.1:30400"},
    )

and the mongo stage ``record_stage("mongo", facts={"shards": 2, "mongos": 2})``.
A dry run records nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from datacloud import config
from datacloud.errors import UserError
from datacloud.stages import STAGES

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# A task that runs a Spark application pushes its application id under this
# XCom key; the plugin's "Spark History Server" task link reads it.
SPARK_APP_XCOM_KEY = "spark_application_id"


@dataclass(frozen=True)
class Service:
    """A web UI of the platform that the Airflow navigation links to."""

    key: str
    title: str
    stage: str  # the stage that installs it and records its address


# Order = order in the navigation menu.
SERVICES: dict[str, Service] = {
    s.key: s
    for s in (
        Service("grafana", "Grafana", "monitoring"),
        Service("jupyterhub", "JupyterHub", "jupyter"),
        Service("spark_history", "Spark History Server", "spark"),
        Service("headlamp", "Headlamp (Kubernetes)", "monitoring"),
        Service("prometheus", "Prometheus", "monitoring"),
    )
}

_SAFE_FACT_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def state_path() -> Path:
    override = os.environ.get("DATACLOUD_PLATFORM_STATE")
    return Path(override) if override else config.data_dir() / "platform" / "state.json"


def _empty() -> dict[str, Any]:
    return {"version": SCHEMA_VERSION, "stages": {}, "services": {}}


def _check_url(key: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"the address recorded for {key} must be an http(s) URL with a host, not {url!r}.")
    return url.rstrip("/")


@dataclass(frozen=True)
class PlatformState:
    """A read-only view of the recorded state."""

    data: Mapping[str, Any]

    def provisioned(self, stage: str) -> bool:
        return stage in self.data.get("stages", {})

    def stage(self, stage: str) -> dict[str, Any] | None:
        return self.data.get("stages", {}).get(stage)

    def facts(self, stage: str) -> dict[str, Any]:
        return dict((self.stage(stage) or {}).get("facts", {}))

    def service_url(self, key: str) -> str | None:
        """The address of a service, only once the stage that installs it has run."""
        svc = SERVICES.get(key)
        entry = self.data.get("services", {}).get(key)
        if not entry or (svc and not self.provisioned(svc.stage)):
            return None
        return entry.get("url")

    def links(self) -> list[tuple[Service, str]]:
        """(service, url) for every service whose stage has run, in menu order."""
        out = []
        for key, svc in SERVICES.items():
            url = self.service_url(key)
            if url:
                out.append((svc, url))
        return out

    @property
    def any_provisioned(self) -> bool:
        return bool(self.data.get("stages"))


def load_state(path: Path | None = None) -> PlatformState:
    """The recorded state; an empty one when nothing was provisioned yet.

    A damaged file is reported in the log and treated as empty, so the UI and
    health checks keep working; the next ``record_stage`` rewrites it.
    """
    path = path or state_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return PlatformState(_empty())
    except (OSError, ValueError) as exc:
        log.warning("Platform state | %s is unreadable (%s); treating the platform as not provisioned", path, exc)
        return PlatformState(_empty())
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
        log.warning("Platform state | %s has an unknown format; treating the platform as not provisioned", path)
        return PlatformState(_empty())
    return PlatformState(data)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_stage(
    stage: str,
    *,
    run_id: str | None = None,
    services: Mapping[str, str] | None = None,
    facts: Mapping[str, Any] | None = None,
    path: Path | None = None,
    now: datetime | None = None,
) -> bool:
    """Record that ``stage`` converged, with the addresses of what it installed.

    Returns True when something changed, False (and logs "unchanged") when
    the same stage with the same services and facts was already recorded.
    """
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}.")
    services = {k: _check_url(k, v) for k, v in (services or {}).items()}
    for key in services:
        if key not in SERVICES:
            raise UserError(f"unknown service {key!r}; services are {', '.join(SERVICES)}.")
        if SERVICES[key].stage != stage:
            raise UserError(f"service {key} is installed by stage {SERVICES[key].stage}, not {stage}.")
    facts = dict(facts or {})
    for key in facts:
        if not _SAFE_FACT_KEY.match(key):
            raise UserError(f"fact name {key!r} must be lowercase letters, digits and '_'.")
    json.dumps(facts)  # facts must be JSON; fail here, not when writing
    path = path or state_path()
    with _locked(path):
        data = dict(load_state(path).data)
        stages = dict(data.get("stages", {}))
        all_services = dict(data.get("services", {}))
        old = stages.get(stage)
        old_services = {k: v.get("url") for k, v in all_services.items() if v.get("stage") == stage}
        if old is not None and old.get("facts", {}) == facts and old_services == services:
            log.info("Platform state | %s unchanged", stage)
            return False
        stages[stage] = {
            "recorded_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
            "run_id": run_id,
            "facts": facts,
        }
        for key in list(all_services):
            if all_services[key].get("stage") == stage and key not in services:
                del all_services[key]
        for key, url in services.items():
            all_services[key] = {"url": url, "stage": stage}
        data.update(version=SCHEMA_VERSION, stages=stages, services=all_services)
        _write(path, data)
    where = ", ".join(f"{k} {v}" for k, v in services.items())
    log.info("Platform state | %s recorded%s", stage, f" ({where})" if where else "")
    return True


def forget(stages: list[str] | None = None, *, path: Path | None = None) -> list[str]:
    """Drop stages from the state (all when None), e.g. after ``platform_teardown``."""
    path = path or state_path()
    with _locked(path):
        data = dict(load_state(path).data)
        current = dict(data.get("stages", {}))
        gone = [s for s in (stages if stages is not None else list(current)) if s in current]
        for s in gone:
            del current[s]
        data["stages"] = current
        data["services"] = {k: v for k, v in data.get("services", {}).items() if v.get("stage") not in gone}
        if gone:
            _write(path, data)
    log.info("Platform state | forgot %s", ", ".join(gone) if gone else "nothing (no such stage recorded)")
    return gone


# --- recording from provision_platform's tasks (called by the plugin's listener) --------------

PROVISION_DAG_ID = "provision_platform"
STAGE_ASSET_PREFIX = "datacloud://platform/"


def _simple_facts(result: Any) -> dict[str, Any]:
    """The scalar facts of a step's result (counts, versions, names); lists, dicts and changes are left out."""
    if not isinstance(result, Mapping):
        return {}
    return {
        k: v for k, v in result.items()
        if k not in ("changes", "dry_run") and isinstance(k, str) and _SAFE_FACT_KEY.match(k)
        and isinstance(v, (str, int, float, bool)) and len(str(v)) <= 200
    }


def record_from_task(
    *,
    dag_id: str,
    outlet_uris: list[str],
    params: Mapping[str, Any],
    result: Any = None,
    run_id: str | None = None,
    mapped: bool = False,
    path: Path | None = None,
) -> str | None:
    """Record a stage when the task carrying its Asset (the stage's last task) succeeded.

    Returns the stage recorded, or None when the task is not a stage's last
    task, or the run was a dry run. A stage module may define
    ``services(inv) -> {service key: URL}`` for the navigation links.
    """
    if dag_id != PROVISION_DAG_ID or params.get("dry_run"):
        return None
    stages = [u[len(STAGE_ASSET_PREFIX):] for u in outlet_uris if u.startswith(STAGE_ASSET_PREFIX)]
    stage = next((s for s in stages if s in STAGES), None)
    if stage is None:
        return None
    services: dict[str, str] = {}
    from datacloud.stages import stage_module

    module = stage_module(stage)
    if module is not None and hasattr(module, "services"):
        from datacloud.inventory import load_inventory

        services = dict(module.services(load_inventory(config.resolve_inventory_path(params.get("inventory")))))
    record_stage(stage, run_id=run_id, services=services, facts={} if mapped else _simple_facts(result), path=path)
    return stage
