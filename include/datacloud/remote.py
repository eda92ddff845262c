"""Remote execution on the nodes over SSH, through the ssh provider's SSHHook.

``Remote(inv, node)`` talks to one inventory node: the host and port come from
the inventory, the user from ``inv.ssh.user`` and the key from the Airflow
connection ``datacloud_ssh`` (extras ``key_file`` or ``private_key``).

* **Quoting.** Every command is built by :func:`build_command` from a list of
  words, each passed through ``shlex.quote``; environment values go through
  ``env NAME=value`` words, so nothing from the inventory or the Params is
  ever pasted into a shell raw. Scripts from ``include/scripts/`` are sent as
  the argument of ``bash -c`` (prefixed by ``lib.sh``), never as a file.
* **become.** With ``inv.ssh.become`` and a non-root user the words are
  prefixed by ``sudo -n --`` (no password prompt: a sudoer without password).
* **Host keys** are pinned by the project, never ``no_host_key_check``: the
  first connection with ``record_host_key=True`` (the preflight stage) stores
  the node's key in ``<data dir>/ssh/known_hosts`` (trust on first use); every
  later connection checks it and a mismatch fails hard naming the node and
  both fingerprints. Other stages refuse nodes that preflight never recorded.
  A node with ``ssh_host_key`` in the inventory (a ``SHA256:`` fingerprint) is
  not trusted on first use: the key it offers must have that fingerprint before
  it is recorded (any stage may then connect first), and a recorded key must
  still match the pin.
* **Output** is streamed line by line into the task log as ``node | line``
  and returned with the exit code. Lines a script prints as ``@@change ...``
  or ``@@fact key value`` are collected into :class:`Result`.
* **Timeouts**: ``inv.ssh.connect_timeout_s`` for connecting,
  ``inv.ssh.command_timeout_s`` (or ``timeout=``) for each command.

Connection failures are :class:`~datacloud.errors.TransientError` (tasks
retry), except where the caller says an unreachable node is a user problem
(preflight): then :class:`UnreachableError`, one sentence, no retries.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import re
import selectors
import shlex
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datacloud import config
from datacloud.errors import TransientError, UserError
from datacloud.inventory import Inventory, Node

log = logging.getLogger(__name__)

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
SCRIPT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.sh$")
LIB = "lib.sh"
USER_ERROR_RC = 3  # lib.sh user_error: the administrator must fix something


class HostKeyMismatchError(UserError):
    """The node offered another host key than the one preflight recorded."""


class UnknownHostKeyError(UserError):
    """No host key was recorded for the node (preflight has not run)."""


class UnreachableError(UserError):
    """The node cannot be reached or refuses our key (a user fix, no retries)."""


class CommandError(Exception):
    """A remote command exited non-zero where the caller required success."""

    def __init__(self, node: str, what: str, result: Result) -> None:
        tail = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
        super().__init__(f"{node}: {what} exited {result.rc}: {tail}")
        self.node = node
        self.result = result


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    changes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def changed(self) -> bool:
        return bool(self.changes)


# --- command building: the only place words become a shell string ---------


def build_command(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    become: bool = False,
) -> str:
    """One shell command line from words; every word is quoted with shlex.quote.

    ``shlex.split(build_command(argv, env, become))`` gives back exactly
    ``[sudo -n --] [env K=V ...] argv`` — the property the tests check.
    """
    words: list[str] = []
    if become:
        words += ["sudo", "-n", "--"]
    if env:
        words.append("env")
        for key, value in env.items():
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"environment name {key!r} is not an upper-case shell name")
            if not isinstance(value, str):
                raise TypeError(f"environment value of {key} must be a string, got {type(value).__name__}")
            if "\x00" in value:
                raise ValueError(f"environment value of {key} contains a NUL byte")
            words.append(f"{key}={value}")
    if not argv:
        raise ValueError("empty command")
    for word in argv:
        if not isinstance(word, str):
            raise TypeError(f"command word {word!r} must be a string")
        if "\x00" in word:
            raise ValueError("a command word contains a NUL byte")
    words += list(argv)
    return " ".join(shlex.quote(w) for w in words)


def script_text(name: str, scripts_dir: Path | None = None) -> str:
    """lib.sh followed by include/scripts/<name>: what ``bash -c`` runs on the node."""
    if not SCRIPT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a script name like node-prep.sh")
    base = scripts_dir or config.SCRIPTS_DIR
    body = (base / name).read_text(encoding="utf-8")
    lib = (base / LIB).read_text(encoding="utf-8")
    return f"{lib}\n# ---- {name} ----\n{body}"


def script_argv(name: str, args: Sequence[str] = (), scripts_dir: Path | None = None) -> list[str]:
    """``bash -c <lib.sh + script> <name> args...`` as words (quoted later)."""
    return ["bash", "-c", script_text(name, scripts_dir), name, *args]


# --- host keys: trust on first use, stored by the project -----------------


def known_hosts_path() -> Path:
    return config.data_dir() / "ssh" / "known_hosts"


def fingerprint(key) -> str:
    """OpenSSH style: SHA256:<base64 without padding>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


_store_lock = threading.Lock()


class HostKeyStore:
    """``<data dir>/ssh/known_hosts`` in OpenSSH format, one entry per node address and port."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or known_hosts_path()

    @staticmethod
    def host_id(address: str, port: int) -> str:
        return address if port == 22 else f"[{address}]:{port}"

    def _load(self):
        import paramiko

        keys = paramiko.HostKeys()
        if self.path.exists():
            keys.load(str(self.path))
        return keys

    def get(self, address: str, port: int):
        entry = self._load().lookup(self.host_id(address, port))
        if not entry:
            return None
        return next(iter(entry.values()))

    def record(self, address: str, port: int, key) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _store_lock, open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self._load()
            host = self.host_id(address, port)
            if keys.lookup(host):
                return
            keys.add(host, key.get_name(), key)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            keys.save(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)


# Host key types a pin may name, as OpenSSH servers offer them by default.
PIN_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512")


def fetch_host_key(address: str, port: int, timeout: float, key_type: str | None = None):
    """The key the server offers (of ``key_type`` if given), read from a bare SSH handshake (no authentication)."""
    import paramiko

    sock = socket.create_connection((address, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        if key_type is not None:
            transport.get_security_options().key_types = [key_type]
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def fetch_pinned_host_key(address: str, port: int, timeout: float, pin: str):
    """The node's key whose fingerprint is ``pin`` (an administrator may pin any of its key types),
    else the key it offers first (which then does not match)."""
    import paramiko

    offered = fetch_host_key(address, port, timeout)
    if fingerprint(offered) == pin:
        return offered
    for key_type in PIN_KEY_TYPES:
        if key_type == offered.get_name() or (key_type.startswith("rsa-") and offered.get_name() == "ssh-rsa"):
            continue
        try:
            other = fetch_host_key(address, port, timeout, key_type)
        except paramiko.SSHException:  # the node has no key of that type
            continue
        if fingerprint(other) == pin:
            return other
    return offered


# --- the remote itself -----------------------------------------------------


class Remote:
    """Commands and scripts on one node. Use as a context manager or call close()."""

    def __init__(
        self,
        inv: Inventory,
        node: Node | str,
        *,
        ssh_conn_id: str = config.SSH_CONN_ID,
        record_host_key: bool = False,
        unreachable_is_user_error: bool = False,
        store: HostKeyStore | None = None,
    ) -> None:
        self.inv = inv
        self.node = inv.node(node) if isinstance(node, str) else node
        self.ssh_conn_id = ssh_conn_id
        self.record_host_key = record_host_key
        self.unreachable_is_user_error = unreachable_is_user_error
        self.store = store or HostKeyStore()
        self.address = str(self.node.address)
        self.port = inv.ssh.port
        self.become = inv.ssh.become and inv.ssh.user != "root"
        self._hook = None
        self._client = None

    @property
    def label(self) -> str:
        return f"{self.node.name} ({self.address})"

    # -- connecting --

    def _unreachable(self, why: str) -> Exception:
        if self.unreachable_is_user_error:
            return UnreachableError(
                f"{self.label} is unreachable over SSH on port {self.port} ({why}); "
                "check that the machine is on, the address is right and sshd is running."
            )
        return TransientError(f"{self.label}: SSH connection failed ({why})")

    def _pinned_key(self):
        import paramiko

        pin = self.node.ssh_host_key
        pinned = self.store.get(self.address, self.port)
        if pinned is not None:
            if pin is not None and fingerprint(pinned) != pin:
                raise HostKeyMismatchError(
                    f"{self.label} has host key {fingerprint(pinned)} recorded in {self.store.path} but the inventory "
                    f"pins {pin} (nodes[].ssh_host_key); correct the pin, or delete the node's line there if the "
                    "machine was reinstalled."
                )
            return pinned
        if not self.record_host_key and pin is None:
            raise UnknownHostKeyError(
                f"{self.label} has no recorded host key in {self.store.path}; run the preflight stage first."
            )
        timeout = self.inv.ssh.connect_timeout_s
        try:
            if pin is None:
                offered = fetch_host_key(self.address, self.port, timeout)
            else:
                offered = fetch_pinned_host_key(self.address, self.port, timeout, pin)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._unreachable(_why(exc)) from None
        if pin is not None and fingerprint(offered) != pin:
            raise HostKeyMismatchError(
                f"{self.label} offered host key {fingerprint(offered)} but the inventory pins {pin} "
                "(nodes[].ssh_host_key); check that the address is the right machine, or correct the pin."
            )
        self.store.record(self.address, self.port, offered)
        how = "matches the inventory's pin" if pin is not None else "trust on first use"
        log.info("SSH | Host key | %s recorded %s %s (%s)", self.label, offered.get_name(), fingerprint(offered), how)
        return self.store.get(self.address, self.port)

    def connect(self):
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
        import paramiko
        from airflow.providers.ssh.hooks.ssh import SSHHook

        pinned = self._pinned_key()
        hook = SSHHook(
            ssh_conn_id=self.ssh_conn_id,
            remote_host=self.address,
            port=self.port,
            username=self.inv.ssh.user,
            conn_timeout=self.inv.ssh.connect_timeout_s,
            cmd_timeout=self.inv.ssh.command_timeout_s,
            banner_timeout=self.inv.ssh.connect_timeout_s,
            auth_timeout=self.inv.ssh.connect_timeout_s,
            conn_retry_attempts=1,
            keepalive_interval=15,
            no_host_key_check=False,
        )
        hook.host_key = pinned  # the hook adds it to the client's known keys and verifies the server against it
        hook.allow_host_key_change = False
        try:
            client = hook.get_conn()
        except paramiko.BadHostKeyException as exc:
            raise HostKeyMismatchError(
                f"{self.label} offered host key {fingerprint(exc.key)} but {fingerprint(exc.expected_key)} was recorded "
                f"in {self.store.path}; if the machine was reinstalled, delete its line there and run preflight again."
            ) from None
        except paramiko.AuthenticationException as exc:
            raise UnreachableError(
                f"{self.label} refused the key of connection {self.ssh_conn_id} for user {self.inv.ssh.user} ({exc}); "
                "add the public key to that user's authorized_keys."
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._unreachable(_why(exc)) from None
        self._hook, self._client = hook, client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._hook = None

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running --

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
        become: bool | None = None,
        what: str | None = None,
        quiet: bool = False,
    ) -> Result:
        """Run words on the node; stream output to the log; raise CommandError on failure if check."""
        command = build_command(argv, env=env, become=self.become if become is None else become)
        result = self._exec(command, stdin=stdin, timeout=timeout or self.inv.ssh.command_timeout_s, quiet=quiet)
        if check and result.rc != 0:
            raise CommandError(self.node.name, what or argv[0], result)
        return result

    def script(
        self,
        name: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> Result:
        """Run include/scripts/<name> (with lib.sh) with quoted args and environment.

        Exit code 3 (lib.sh's ``user_error``) is a problem the user fixes: UserError, no retries.
        """
        res = self.run(script_argv(name, args), env=env, stdin=stdin, timeout=timeout, check=False, what=name)
        if res.rc == USER_ERROR_RC:
            lines = res.stderr.strip().splitlines() or ["failed"]
            raise UserError(f"{self.label}: {lines[-1].rstrip('.')}.")
        if check and res.rc != 0:
            raise CommandError(self.node.name, name, res)
        return res

    def _exec(self, command: str, *, stdin: str | bytes | None, timeout: float, quiet: bool) -> Result:
        import paramiko

        client = self.connect()
        transport = client.get_transport()
        try:
            channel = transport.open_session(timeout=self.inv.ssh.connect_timeout_s)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise TransientError(f"{self.label}: SSH session failed ({_why(exc)})") from None

        out, err = _LineSink(self.node.name, "", quiet), _LineSink(self.node.name, "stderr: ", quiet)
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(channel, selectors.EVENT_READ)
            while True:
                while channel.recv_ready():
                    out.feed(channel.recv(65536))
                while channel.recv_stderr_ready():
                    err.feed(channel.recv_stderr(65536))
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if channel.closed and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    channel.close()
                    self.close()
                    raise TransientError(f"{self.label}: command timed out after {timeout:.0f}s")
                selector.select(min(left, 1.0))
                if not transport.is_active():
                    # drain what arrived, then report the broken connection
                    while channel.recv_ready():
                        out.feed(channel.recv(65536))
                    if not channel.exit_status_ready():
                        self.close()
                        raise TransientError(f"{self.label}: SSH connection lost while a command was running")
        rc = channel.recv_exit_status()
        if rc == -1:
            self.close()
            raise TransientError(f"{self.label}: SSH connection lost while a command was running")
        out.close()
        err.close()
        channel.close()
        result = Result(rc=rc, stdout=out.text, stderr=err.text)
        for line in result.stdout.splitlines():
            if line.startswith("@@change "):
                result.changes.append(line[len("@@change ") :])
            elif line.startswith("@@fact "):
                parts = line.split(" ", 2)
                if len(parts) >= 2:
                    result.facts[parts[1]] = parts[2] if len(parts) == 3 else ""
        return result


class _LineSink:
    """Collects a byte stream and logs every complete line as ``node | line``."""

    def __init__(self, node: str, prefix: str, quiet: bool) -> None:
        self.node, self.prefix, self.quiet = node, prefix, quiet
        self._buf = b""
        self._all: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self._all.append(data)
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self._log(line)

    def close(self) -> None:
        if self._buf:
            self._log(self._buf)
            self._buf = b""

    def _log(self, line: bytes) -> None:
        if not self.quiet:
            log.info("%s | %s%s", self.node, self.prefix, line.decode("utf-8", "replace").rstrip("\r"))

    @property
    def text(self) -> str:
        return b"".join(self._all).decode("utf-8", "replace")


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
