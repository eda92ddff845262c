"""Airflow API errors never echo what was sent (issue 12, item 11)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datacloud.api import AirflowAPI
from datacloud.errors import UserError

PASSWORD = 's3cr3t-Pa55"word'
ADMIN_PASSWORD = "admin-pw-123"


class _EchoingAirflow(BaseHTTPRequestHandler):
    """Answers like Airflow's API server does when it refuses a body: echoing it back."""

    def log_message(self, *args) -> None:
        pass

    def _answer(self, code: int, payload: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        sent = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(sent)
        if self.path == "/auth/token":
            self._answer(201, json.dumps({"access_token": "tok-abc-987"}).encode())
        elif self.path == "/api/v2/connections":  # FastAPI's 422 carries the input
            detail = [{"type": "missing", "loc": ["body", "conn_type"], "msg": "Field required", "input": body}]
            self._answer(422, json.dumps({"detail": detail}).encode())
        elif self.path == "/api/v2/plain":  # a proxy or an error page quoting the request
            self._answer(400, b"bad request: " + sent, "text/plain")
        else:  # a detail that is a string built from the body
            self._answer(409, json.dumps({"detail": f"cannot store {body}"}).encode())


@pytest.fixture
def api() -> Iterator[AirflowAPI]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingAirflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield AirflowAPI(f"http://127.0.0.1:{server.server_port}", "admin", ADMIN_PASSWORD, timeout=5)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", ["/api/v2/connections", "/api/v2/plain", "/api/v2/string"])
def test_an_error_never_echoes_the_request_body(api: AirflowAPI, path: str) -> None:
    body = {"connection_id": "datacloud_mongo", "password": PASSWORD, "extra": json.dumps({"key": PASSWORD})}
    with pytest.raises(UserError) as err:
        api._request("POST", path, body)
    message = str(err.value)
    for secret in (PASSWORD, json.dumps(PASSWORD)[1:-1], "s3cr3t", ADMIN_PASSWORD, "tok-abc-987"):
        assert secret not in message
    assert message.startswith(f"Airflow API POST {path} answered ")


def test_a_validation_error_keeps_where_and_what(api: AirflowAPI) -> None:
    with pytest.raises(UserError, match=r"^Airflow API POST /api/v2/connections answered 422: body\.conn_type: Field required$"):
        api._request("POST", "/api/v2/connections", {"connection_id": "x", "password": PASSWORD})
