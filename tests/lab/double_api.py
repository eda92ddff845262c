"""What the lab's controller doubles share (tests/lab/spark_operator_double.py,
tests/lab/psmdb_operator_double.py): the in-cluster API with the pod's ServiceAccount token,
the operator's probe ports, its ``--flag=value`` arguments. Python standard library only (it
runs on Debian's python3 in the doubles' images, next to them in /opt)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v.strip('"')
    return out


class Api:
    """The in-cluster API server, with this pod's ServiceAccount token."""

    def __init__(self) -> None:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        self.base = f"https://{host}:{port}"
        self.ctx = ssl.create_default_context(cafile=str(SA / "ca.crt"))

    def call(self, method: str, path: str, body: dict | None = None, content_type: str = "application/json") -> dict | None:
        token = (SA / "token").read_text().strip()  # re-read: the kubelet rotates it
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from None
        return json.loads(raw) if raw else {}


def serve_probes(port: int = 8081) -> None:
    class Probes(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path in ("/healthz", "/readyz", "/metrics")
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"ok\n" if ok else b"")

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("", port), Probes)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    if port != 8080:  # the metrics port the chart's Service names
        try:
            m = http.server.ThreadingHTTPServer(("", 8080), Probes)
            threading.Thread(target=m.serve_forever, daemon=True).start()
        except OSError:
            pass


# --- controller ------------------------------------------------------------------------------


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
