"""Writing the Airflow connections the stages create (``datacloud_kube``, ``datacloud_mongo``).

Task code in Airflow 3 has no metadata-DB access, so a task writes a connection
through the Airflow REST API, with the credentials of the connection
``datacloud_airflow_api`` (type http: host = the API base URL, login and
password of a user who may edit connections). ``./dev up`` defines it for the
local stack; an administrator creates it once on any other Airflow
(docs/operations.md). Without it (``dag.test()`` in one process, or a worker
with DB access) the write goes to the metadata DB from a child interpreter.
Secrets travel in request bodies or on stdin, never on a command line or in a log:
every stage hands the secret values it reads or makes to :func:`mask`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from typing import Any

from datacloud.errors import TransientError, UserError

log = logging.getLogger(__name__)

API_CONN_ID = "datacloud_airflow_api"
FIELDS = ("conn_type", "host", "port", "login", "password", "schema", "description")

_DB_WRITE = """
import json, sys
from airflow.models import Connection
from airflow.utils.session import create_session
data = json.load(sys.stdin)
done = 0
with create_session() as session:
    conn = session.query(Connection).filter(Connection.conn_id == data["conn_id"]).one_or_none()
    if data["delete"]:
        if conn is not None:
            session.delete(conn)
            done = 1
    else:
        if conn is None:
            conn = Connection(conn_id=data["conn_id"], conn_type=data["fields"]["conn_type"])
            session.add(conn)
        for key, value in data["fields"].items():
            setattr(conn, key, value)
        conn.set_extra(json.dumps(data["extra"]))
        done = 1
print(done)
"""


def mask(value: str) -> None:
    """Redact a secret value from every task log line (outside a task runtime: nothing to do)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - outside a task runtime
        return
    mask_secret(value)


def get(conn_id: str) -> dict[str, Any] | None:
    """A connection's fields (conn_type, host, port, login, password, schema, extra), or None when it is not defined."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - "not found" has several exception types across secrets backends
        return None
    return {
        "conn_type": conn.conn_type,
        "host": conn.host,
        "port": conn.port,
        "login": conn.login,
        "password": conn.password,
        "schema": conn.schema,
        "extra": conn.extra_dejson,
    }


def _api():
    """An AirflowAPI client from the datacloud_airflow_api connection, or None when it is not defined."""
    from datacloud.api import AirflowAPI

    conn = get(API_CONN_ID)
    if conn is None:
        return None
    base = conn["host"] or ""
    if "://" not in base:
        port = conn["port"]
        base = f"http://{base}{f':{port}' if port else ''}"
    return AirflowAPI(base, conn["login"] or "", conn["password"] or "")


def _db(conn_id: str, fields: dict[str, Any] | None, extra: dict[str, Any] | None) -> int:
    payload = json.dumps({"conn_id": conn_id, "delete": fields is None, "fields": fields or {}, "extra": extra or {}})
    proc = subprocess.run([sys.executable, "-c", _DB_WRITE], input=payload, text=True, capture_output=True, timeout=120)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TransientError(
            f"writing the connection {conn_id} to the metadata DB failed ({tail}); in Airflow 3 tasks cannot reach the DB: "
            f"create the connection {API_CONN_ID} (http, API URL, a user who may edit connections)"
        )
    return int((proc.stdout.strip() or "0").splitlines()[-1])


def put(conn_id: str, conn_type: str, *, extra: dict[str, Any] | None = None, api: Any = None, **fields: Any) -> None:
    """Create or replace a connection (through ``api``, an AirflowAPI, when given)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown connection fields {sorted(unknown)}")
    values = {k: v for k, v in {"conn_type": conn_type, **fields}.items() if v is not None}
    api = api or _api()
    if api is None:
        _db(conn_id, values, extra)
        log.info("Connections | %s | stored in the metadata DB", conn_id)
        return
    body = {"connection_id": conn_id, **values, "extra": json.dumps(extra or {})}
    path = f"/api/v2/connections/{urllib.parse.quote(conn_id)}"
    try:
        api._request("GET", path)
        exists = True
    except UserError:
        exists = False
    if exists:
        api._request("PATCH", path, body)
    else:
        api._request("POST", "/api/v2/connections", body)
    log.info("Connections | %s | stored through the Airflow API", conn_id)


def write_connection(conn_id: str, fields: dict[str, Any]) -> None:
    """:func:`put` with the fields as one dict, the shape :func:`get` returns (``conn_type``, ``extra`` included)."""
    values = dict(fields)
    conn_type = values.pop("conn_type")
    extra = values.pop("extra", None) or {}
    put(conn_id, conn_type, extra=extra, **values)


def publish_connection(
    conn_id: str,
    fields: dict[str, Any],
    get_current: Callable[[str], dict[str, Any] | None],
    write: Callable[[str, dict[str, Any]], None],
) -> bool:
    """Store the connection unless it already holds exactly these fields; True when written."""
    if get_current(conn_id) == fields:
        return False
    write(conn_id, fields)
    return True


def delete(conn_id: str) -> bool:
    """Delete a connection; False when there was none."""
    api = _api()
    if api is None:
        return _db(conn_id, None, None) == 1
    path = f"/api/v2/connections/{urllib.parse.quote(conn_id)}"
    try:
        api._request("GET", path)
    except UserError:
        return False
    api._request("DELETE", path)
    return True
