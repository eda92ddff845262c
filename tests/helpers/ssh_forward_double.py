"""Test double of a node's SSH server that only forwards TCP (``direct-tcpip``).

A real SSH protocol server (paramiko) on 127.0.0.1 standing for the control
plane: it accepts any client (``auth_none``) and connects each forwarded
channel to a local address looked up in ``routes`` — the double's idea of
which (cluster IP, port) is which local test server. Not an sshd; it exists
so ``datacloud.forward`` can be exercised over real SSH channels.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any

import paramiko


class _Server(paramiko.ServerInterface):
    def __init__(self, double: SshForwardDouble) -> None:
        self.double = double

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "direct-tcpip" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid: int, origin: Any, destination: tuple[str, int]) -> int:
        self.double.requested.append(destination)
        if tuple(destination) not in self.double.routes:
            return paramiko.OPEN_FAILED_CONNECT_FAILED
        self.double.pending[chanid] = tuple(destination)
        return paramiko.OPEN_SUCCEEDED


class SshForwardDouble:
    def __init__(self, routes: dict[tuple[str, int], tuple[str, int]]) -> None:
        self.routes = routes
        self.requested: list[tuple[str, int]] = []
        self.pending: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._host_key = paramiko.ECDSAKey.generate()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self.port = self._listener.getsockname()[1]
        self._server_transport: paramiko.Transport | None = None
        self.client_transport: paramiko.Transport | None = None

    def start(self) -> paramiko.Transport:
        """Start serving and return a connected, authenticated client transport."""
        accepted: list[socket.socket] = []
        ready = threading.Event()

        def accept_one() -> None:
            sock, _ = self._listener.accept()
            accepted.append(sock)
            ready.set()

        t = threading.Thread(target=accept_one, daemon=True)
        t.start()
        client_sock = socket.create_connection(("127.0.0.1", self.port))
        ready.wait(10)
        server = paramiko.Transport(accepted[0])
        server.add_server_key(self._host_key)
        negotiated = threading.Event()
        server.start_server(event=negotiated, server=_Server(self))  # returns at once; negotiates in its thread
        self._server_transport = server
        client = paramiko.Transport(client_sock)
        client.start_client(timeout=10)
        client.auth_none("datacloud")
        self.client_transport = client
        loop = threading.Thread(target=self._serve, daemon=True)
        loop.start()
        self._threads.append(loop)
        return client

    def _serve(self) -> None:
        assert self._server_transport is not None
        while not self._stop.is_set():
            channel = self._server_transport.accept(0.5)
            if channel is None:
                continue
            destination = self.pending.pop(channel.get_id(), None)
            target = socket.create_connection(self.routes[destination])
            pump = threading.Thread(target=self._pump, args=(channel, target), daemon=True)
            pump.start()
            self._threads.append(pump)

    def _pump(self, channel: Any, target: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([channel, target], [], [], 0.5)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    target.sendall(data)
                if target in ready:
                    data = target.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.close()
            with contextlib.suppress(OSError):
                channel.close()

    def stop(self) -> None:
        self._stop.set()
        if self.client_transport is not None:
            self.client_transport.close()
        if self._server_transport is not None:
            self._server_transport.close()
        self._listener.close()
        for t in self._threads:
            t.join(2)
