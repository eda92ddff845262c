"""A small client for the Airflow 3 REST API (``/auth/token`` and ``/api/v2``)."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from datacloud.errors import TransientError, UserError

log = logging.getLogger(__name__)

TERMINAL = {"success", "failed"}
MAX_DETAIL = 300


def _leaves(value: Any) -> set[str]:
    """Every string inside a request body (values, not keys), also inside strings that hold JSON."""
    out: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, str) and v:
            out.add(v)
            if v[:1] in "[{":  # a connection's extra is JSON in a string
                try:
                    stack.append(json.loads(v))
                except ValueError:
                    pass
    return out


def error_detail(raw: bytes, body: Any = None, secrets: tuple[str, ...] = ()) -> str:
    """What the API said about a refused request, with nothing of the request body in it.

    FastAPI's validation errors (422) echo what was sent as ``input`` (a connection's
    password, say): only their ``loc`` and ``msg`` are kept. Whatever remains has every
    string of the body (and of ``secrets``), plain, JSON-escaped or repr-escaped, replaced by ``***``.
    """
    text = raw.decode(errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "detail" in parsed:
        detail = parsed["detail"]
        if isinstance(detail, list):
            text = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc') or [])}: {e.get('msg', '')}" if isinstance(e, dict) else "?"
                for e in detail
            )
        elif isinstance(detail, dict):
            text = str(detail.get("reason") or detail.get("message") or "no reason given")
        else:
            text = str(detail)
    for value in sorted({*_leaves(body), *(s for s in secrets if s)}, key=len, reverse=True):
        for form in (value, json.dumps(value)[1:-1], repr(value)[1:-1]):
            text = text.replace(form, "***")
    return text[:MAX_DETAIL]


class AirflowAPI:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)  # noqa: S310 - our URL
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = error_detail(exc.read(), body, (self.password, self._token or ""))
            if exc.code in (502, 503, 504):
                raise TransientError(f"Airflow API {method} {path} answered {exc.code}") from None
            raise UserError(f"Airflow API {method} {path} answered {exc.code}: {detail}") from None
        except OSError as exc:
            raise TransientError(f"Airflow API at {self.base} is unreachable ({exc})") from None
        return json.loads(raw) if raw else None

    def token(self) -> str:
        if self._token is None:
            body = self._request("POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False)
            self._token = body["access_token"]
        return self._token

    def dags(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v2/dags?limit=100")["dags"]

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the DAG processor has parsed the DAG."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._request("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}")
            except UserError:
                if time.monotonic() > deadline:
                    raise UserError(
                        f"DAG {dag_id} did not appear in Airflow within {timeout:.0f}s; check the DAG processor log."
                    ) from None
                time.sleep(2)

    def import_errors(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v2/importErrors")["import_errors"]

    def ensure_pool(self, name: str, slots: int, description: str) -> str:
        """Create the pool when missing; an existing pool (maybe resized by an admin) is left alone."""
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        try:
            self._request("POST", "/api/v2/pools", body)
        except UserError as exc:
            if " answered 409" in str(exc):  # it exists already
                return "unchanged"
            raise
        return "created"

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{urllib.parse.quote(dag_id)}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> dict[str, Any]:
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self._request("POST", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns", body)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id)}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns?limit=100&order_by=logical_date")[
            "dag_runs"
        ]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances?limit=500"
        return self._request("GET", path)["task_instances"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        start = time.monotonic()
        last_log = start
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() - start > timeout:
                raise UserError(f"run {run_id} of {dag_id} is still {run['state']} after {timeout:.0f}s.")
            if time.monotonic() - last_log >= 15:
                log.info("API | waiting for %s %s: %s (%.0fs elapsed)", dag_id, run_id, run["state"], time.monotonic() - start)
                last_log = time.monotonic()
            time.sleep(1)
