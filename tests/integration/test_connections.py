"""Stages write connections through the Airflow REST API (task code has no DB access in Airflow 3)."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from datacloud import connections


def test_put_replace_delete_through_the_api(airflow_stack, airflow_api, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the stages' own op user (datacloud-stages), not admin; ./dev up stored its connection in the DB."""
    stored = airflow_api._request("GET", "/api/v2/connections/datacloud_airflow_api")
    assert (stored["conn_type"], stored["host"], stored["login"]) == ("http", airflow_stack.airflow_url, "datacloud-stages")
    assert "AIRFLOW_CONN_DATACLOUD_AIRFLOW_API" not in airflow_stack.env()
    password = airflow_stack.ensure_passwords()["datacloud-stages"]
    api_conn = {"conn_type": "http", "host": airflow_stack.airflow_url, "login": "datacloud-stages", "password": password}
    monkeypatch.setenv("AIRFLOW_CONN_DATACLOUD_AIRFLOW_API", json.dumps(api_conn))  # the test process has its own DB
    connections.put("datacloud_probe", "kubernetes", description="probe", extra={"kube_config": "apiVersion: v1"})
    got = airflow_api._request("GET", "/api/v2/connections/datacloud_probe")
    assert got["conn_type"] == "kubernetes" and json.loads(got["extra"]) == {"kube_config": "apiVersion: v1"}

    connections.put(
        "datacloud_probe",
        "mongo",
        host="mongos.mongo.svc",
        port=27017,
        login="datacloud",
        password="s3cret-x",
        schema="datacloud",
    )
    got = airflow_api._request("GET", "/api/v2/connections/datacloud_probe")
    assert (got["conn_type"], got["host"], got["port"], got["login"], got["schema"]) == (
        "mongo",
        "mongos.mongo.svc",
        27017,
        "datacloud",
        "datacloud",
    )

    assert connections.delete("datacloud_probe") is True
    assert connections.delete("datacloud_probe") is False


def test_without_the_api_connection_the_db_path_says_what_to_create(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "_api", lambda: None)  # no datacloud_airflow_api connection
    # a task process in Airflow 3: the DB URL is not usable
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    with pytest.raises(Exception, match="create the connection datacloud_airflow_api"):
        connections.put("datacloud_probe", "kubernetes", extra={})


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets process pid listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            raw = bytes.fromhex(hexaddr)
            addr = raw[::-1] if len(raw) == 4 else b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
            out.append((str(ipaddress.ip_address(addr)), int(hexport, 16)))
    return out


def test_the_api_server_and_ferretdb_listen_on_loopback_only(airflow_stack) -> None:
    """Item 9 of issue 12. Airflow's log servers (8793/8794, `airflow serve-logs`) bind every address in 3.3.2."""
    # by session (each service starts a new one): setproctitle overwrites /proc/<pid>/environ
    sessions = {airflow_stack.running(name) for name in ("airflow", "ferretdb")}
    seen = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) not in sessions:
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            sockets = _listening(int(entry.name))
        except OSError:
            continue
        for addr, port in sockets:
            seen[port] = (addr, title)
    assert seen[airflow_stack.airflow_port][0] == "127.0.0.1"
    assert seen[airflow_stack.mongo_port][0] == "127.0.0.1"
    wide = {port: v for port, v in seen.items() if not ipaddress.ip_address(v[0]).is_loopback and "serve-logs" not in v[1]}
    assert wide == {}
