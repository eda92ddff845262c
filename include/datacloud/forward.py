"""Reach a TCP service inside the private network through the SSH connection.

The Airflow worker reaches the cluster only over SSH (``datacloud.remote``).
:func:`ssh_forward` opens a listener on 127.0.0.1 (a free port) and carries
every connection made to it over an SSH ``direct-tcpip`` channel to
``host:port`` as seen from the node (a Service ClusterIP or a pod IP, which
the control plane can reach). pymongo then talks to mongos through it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

from datacloud.errors import TransientError

log = logging.getLogger(__name__)


def _pump(client: socket.socket, channel: Any, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            ready, _, _ = select.select([client, channel], [], [], 0.5)
            if client in ready:
                data = client.recv(65536)
                if not data:
                    break
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    break
                client.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            channel.close()
        with contextlib.suppress(OSError):
            client.close()


@contextlib.contextmanager
def ssh_forward(transport: Any, host: str, port: int) -> Iterator[tuple[str, int]]:
    """Yield ("127.0.0.1", local_port) forwarding to host:port through ``transport``
    (a connected ``paramiko.Transport``); everything is closed on exit."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.5)
    local_port = listener.getsockname()[1]
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                client, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                channel = transport.open_channel("direct-tcpip", (host, port), addr)
            except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds; the client just sees a closed socket
                log.warning("Forward | %s:%d refused through SSH (%s)", host, port, exc)
                client.close()
                continue
            t = threading.Thread(target=_pump, args=(client, channel, stop), daemon=True)
            t.start()
            workers.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    log.info("Forward | 127.0.0.1:%d -> %s:%d over SSH", local_port, host, port)
    try:
        if not transport.is_active():
            raise TransientError(f"the SSH connection closed before forwarding to {host}:{port}")
        yield "127.0.0.1", local_port
    finally:
        stop.set()
        listener.close()
        acceptor.join(2)
        for t in workers:
            t.join(2)
