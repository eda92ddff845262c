"""`./dev tunnels`: one row per service, commands that quote and hop correctly, docs in sync."""

from __future__ import annotations

import shlex

from datacloud import tunnels
from datacloud.cli import main
from datacloud.config import REPO_ROOT
from datacloud.inventory import parse_inventory_text
from tests.unit.apps_fixtures import all_objects, by_kind, inventories


def test_docs_page_holds_the_commands_table() -> None:
    doc = (REPO_ROOT / "docs" / "services.md").read_text()
    embedded = doc.split("<!-- tunnels:begin -->\n")[1].split("\n<!-- tunnels:end -->")[0]
    assert embedded == tunnels.table(inventories()["reference"])


def test_cli_prints_the_table(capsys) -> None:
    assert main(["tunnels", "inventory.example.yaml"]) == 0
    assert capsys.readouterr().out.strip() == tunnels.table(inventories()["reference"])


def test_every_service_points_at_a_rendered_service() -> None:
    inv = inventories()["reference"]
    rendered_services = {
        (s["metadata"]["namespace"], s["metadata"]["name"]) for s in by_kind(all_objects("reference"), "Service")
    }
    chart_made = {"kube-prometheus-stack-grafana", "kube-prometheus-stack-prometheus", "kube-prometheus-stack-alertmanager",
                  "headlamp", "proxy-public", "datacloud-mongo-mongos"}  # fmt: skip
    for svc in tunnels.services(inv):
        assert (svc.namespace, svc.service) in rendered_services or svc.service in chart_made, svc
    ports = [s.local_port for s in tunnels.services(inv)]
    assert len(ports) == len(set(ports))


def test_commands_are_valid_shell_and_reach_the_control_plane() -> None:
    inv = inventories()["reference"]
    for svc in tunnels.services(inv):
        words = shlex.split(tunnels.command(inv, svc))
        assert words[:2] == ["ssh", "-L"]
        assert "datacloud@192.168.1.1" in words
        assert words[words.index("port-forward") + 4] == f"{svc.local_port}:{svc.port}"


def test_a_separate_gateway_is_a_jump_host_and_node_port_is_used() -> None:
    inv = parse_inventory_text(
        """
network: {subnet: 10.1.0.0/24, gateway: edge}
ssh: {user: ops, port: 2222, become: false}
nodes:
  - {name: cp, address: 10.1.0.2, roles: [control-plane, worker], cpu: 4, memory_gb: 16}
  - {name: edge, address: 10.1.0.3, cpu: 4, memory_gb: 16}
components:
  mongo: {replicas: 2, config_replicas: 2, node_port: 30017}
"""
    )
    table = tunnels.table(inv)
    assert "through the gateway edge (10.1.0.3" in table
    grafana = shlex.split(tunnels.command(inv, tunnels.services(inv)[0]))
    assert grafana[:5] == ["ssh", "-p", "2222", "-J", "ops@10.1.0.3"]
    assert "sudo" not in grafana
    mongo = next(s for s in tunnels.services(inv) if s.namespace == "mongo")
    assert "27017:10.1.0.2:30017" in shlex.split(tunnels.command(inv, mongo))
