"""gateway: the node with internet access forwards and NATs the private subnet; the others route through it.

As in the thesis's network, only one machine reaches the internet. That node
gets IPv4 forwarding and an nftables masquerade of ``network.subnet`` out of
``network.public_interface``; every other node gets its default route (and,
with ``network.dns_servers`` or the gateway's own resolvers, its DNS) through
it. Both are persisted as systemd units. Skipped entirely when the inventory
says ``network.own_uplink: true``.
"""

from __future__ import annotations

import ipaddress
import logging

from datacloud.inventory import Inventory, Node
from datacloud.stages._common import StageContext, Step, outcome

log = logging.getLogger(__name__)


def routed_nodes(inv: Inventory) -> list[Node]:
    gw = inv.gateway_node
    return [] if gw is None else [n for n in inv.nodes if n.name != gw.name]


def forward(ctx: StageContext) -> dict:
    gw = ctx.inv.gateway_node
    if gw is None:
        log.info("gateway | Forward | nodes have their own uplink (network.own_uplink); nothing to do")
        return outcome("gateway", "forward", [], ctx.dry_run, skipped=True)
    env = {**ctx.env, "SUBNET": str(ctx.inv.network.subnet), "PUBLIC_IF": ctx.inv.network.public_interface}
    with ctx.remote(gw) as r:
        res = r.script("gateway.sh", env=env)
    return outcome("gateway", "forward", res.changes, ctx.dry_run, node=gw.name)


def _dns_servers(ctx: StageContext, gw: Node) -> list[str]:
    if ctx.inv.network.dns_servers:
        return [str(a) for a in ctx.inv.network.dns_servers]
    with ctx.remote(gw) as r:
        text = r.run(["cat", "/etc/resolv.conf"], become=False, quiet=True).stdout
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.IPv4Address(parts[1])
            except ValueError:
                continue
            if not addr.is_loopback:
                servers.append(str(addr))
    return servers


def route(ctx: StageContext, node: Node) -> dict:
    gw = ctx.inv.gateway_node
    assert gw is not None  # routed_nodes is empty otherwise
    dns = _dns_servers(ctx, gw)
    if not dns:
        log.info("gateway | Route | %s: no DNS servers known (gateway uses a local resolver); set network.dns_servers", node.name)
    env = {**ctx.env, "GATEWAY_IP": str(gw.address), "DNS_SERVERS": " ".join(dns)}
    with ctx.remote(node) as r:
        res = r.script("route.sh", env=env)
    return outcome("gateway", node.name, res.changes, ctx.dry_run, node=node.name)


STEPS = [Step("forward", forward), Step("route", route, nodes=routed_nodes)]
