"""The inventory report: validation, warnings and the capacity plan, as text."""

from __future__ import annotations

import logging
from typing import Any

from datacloud import capacity, config
from datacloud.inventory import load_inventory

log = logging.getLogger(__name__)


def inventory_report(path: str | None) -> dict[str, Any]:
    """Validate the inventory and log its capacity report; fail when it does not fit."""
    resolved = config.resolve_inventory_path(path)
    inv = load_inventory(resolved)
    log.info("Inventory | %s is valid: %d nodes, control plane %s", resolved, len(inv.nodes), inv.control_plane.name)
    for warning in inv.warnings:
        log.warning("Inventory | %s", warning)
    result = capacity.plan(inv)
    for line in result.report().splitlines():
        log.info("Capacity | %s", line)
    capacity.check(inv)
    return {
        "inventory": str(resolved),
        "nodes": len(inv.nodes),
        "storage": inv.storage_backend,
        "platform_memory_share": round(result.platform_share, 4),
        "storage_mongo_memory_share": round(result.share_of("storage", "mongo"), 4),
    }
