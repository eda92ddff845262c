#!/usr/bin/env python3
"""DOUBLE of mongos and mongod for the SSH lab's Kubernetes cluster, in front of a real FerretDB.

The Percona Operator for MongoDB and mongod cannot run in the lab (their images cannot be
built here), so tests/lab/psmdb_operator_double.py creates pods that run this file instead:
``member`` stands in for one mongod of a shard replica set, ``mongos`` for the router. Both
speak the MongoDB wire protocol (OP_MSG, and the legacy OP_QUERY handshake) on ``--port``.

What is real:
  * FerretDB (a real MongoDB-wire-compatible server, SQLite backend) stores and queries all the
    data. The ``member`` started with ``--ferretdb`` runs it as a child process (restarted if it
    dies, stopped on SIGTERM) and forwards to it; ``mongos`` forwards every client command it
    does not answer itself, as raw bytes over one upstream connection per client connection, and
    relays FerretDB's reply bytes unchanged (so CRUD, aggregation, indexes, cursors are
    FerretDB's own behaviour). Two exceptions: replies on the ``config`` database that carry a
    MinKey/MaxKey marker (below) are re-encoded, and FerretDB's reply to a ``moreToCome``
    request (it answers those anyway) is dropped, as the client expects none.
  * SCRAM-SHA-256 authentication (RFC 5802/7677, as mongod speaks it) against a users file
    (re-read when it changes, so a rotated Kubernetes Secret takes effect without a restart),
    and coarse role-based authorization in front of every command.
  * The sharding metadata is stored in FerretDB's ``config`` database (FerretDB accepts that
    name), so ``config.databases``, ``config.collections`` and ``config.chunks`` are queried
    by FerretDB like any collection.

What is modelled:
  * One store for all shards: every document lives in the single FerretDB. ``listShards``
    comes from ``--shards``; ``shardCollection`` writes the metadata (hashed keys: two chunks
    per shard; ranged keys: one chunk on the primary shard) but moves nothing.
    ``$collStats: {count: {}}`` on a sharded collection reports the real count on the first
    shard and 0 on the others. ``balancerStatus`` reports ``--balancer`` (balancerStart/Stop
    change it in memory only).
  * Replica-set status: ``hello`` and ``replSetGetStatus`` describe ``--hosts`` with the first
    one primary and all healthy; no election, replication or oplog exists.
  * FerretDB has no MinKey/MaxKey: chunk bounds are stored as marker strings and turned back
    into MinKey/MaxKey in replies (and requests) on the ``config`` database.

What it does not do: no balancing, chunk migration, resharding or split; no transactions or
retryable-write semantics beyond FerretDB's; no keyFile/``__system`` (internal) auth,
SCRAM-SHA-1, x.509 or TLS; roles are checked coarsely per command and database (see
``authorize``), listDatabases is not filtered per user; no compression; no streaming hello;
a member without ``--ferretdb`` stores nothing and refuses data commands; hashed indexes are
not created (FerretDB has none). Only the Python standard library and pymongo's ``bson``/
``pymongo`` are used, so this single file runs as ``python3 /opt/mongo-double.py``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import bson
from bson import Binary, Int64, MaxKey, MinKey, ObjectId
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions

OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013
CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
MAX_BSON = 16 * 1024 * 1024
MAX_MESSAGE = 48_000_000
MAX_WRITE_BATCH = 100_000
MAX_WIRE_VERSION = 21  # what FerretDB v1.24.2 reports in hello (MongoDB 7.0)
SCRAM_ITERATIONS = 15_000  # mongod's default scramSHA256IterationCount
MIN_MARK = "MinKey@mongo-double"  # FerretDB has no MinKey/MaxKey BSON types
MAX_MARK = "MaxKey@mongo-double"
MARK_BYTES = b"Key@mongo-double"
FORWARD = object()  # dispatch result: send the request to the store


def _codec() -> CodecOptions:
    kwargs: dict[str, Any] = {"uuid_representation": UuidRepresentation.STANDARD}
    try:
        from bson.codec_options import DatetimeConversion

        kwargs["datetime_conversion"] = DatetimeConversion.DATETIME_AUTO  # dates beyond Python's range survive
    except ImportError:
        pass
    return CodecOptions(**kwargs)


CODEC = _codec()
_log_lock = threading.Lock()


def log(msg: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    with _log_lock:
        sys.stdout.write(f"{stamp} mongo-double {msg}\n")
        sys.stdout.flush()


def error(code: int, name: str, msg: str) -> dict[str, Any]:
    return {"ok": 0.0, "errmsg": msg, "code": code, "codeName": name}


def _render(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k}: {_render(v)}" for k, v in value.items()) + " }"
    return "..."


# --- markers for MinKey/MaxKey ---------------------------------------------------


def to_store(value: Any) -> Any:
    """MinKey/MaxKey -> marker strings (FerretDB refuses those BSON types)."""
    if isinstance(value, MinKey):
        return MIN_MARK
    if isinstance(value, MaxKey):
        return MAX_MARK
    if isinstance(value, dict):
        return {k: to_store(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_store(v) for v in value]
    return value


def from_store(value: Any) -> Any:
    if value == MIN_MARK:
        return MinKey()
    if value == MAX_MARK:
        return MaxKey()
    if isinstance(value, dict):
        return {k: from_store(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_store(v) for v in value]
    return value


def _has_bound_types(value: Any) -> bool:
    if isinstance(value, MinKey | MaxKey):
        return True
    if isinstance(value, dict):
        return any(_has_bound_types(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bound_types(v) for v in value)
    return False


# --- wire messages ---------------------------------------------------------------

_ids = itertools.count(1)  # requestIDs of the messages the double writes
_connections = itertools.count(1)


def _header(length: int, request_id: int, response_to: int, opcode: int) -> bytes:
    return struct.pack("<iiii", length, request_id, response_to, opcode)


def parse_op_msg(body: bytes) -> tuple[int, dict[str, Any], list[tuple[str, bytes]]]:
    """(flags, command body, [(identifier, raw documents)]) of an OP_MSG body after the header."""
    (flags,) = struct.unpack_from("<I", body, 0)
    end = len(body) - (4 if flags & CHECKSUM_PRESENT else 0)
    pos, cmd, seqs = 4, None, []
    while pos < end:
        kind = body[pos]
        pos += 1
        (size,) = struct.unpack_from("<i", body, pos)
        if kind == 0:
            cmd = bson.decode(body[pos : pos + size], CODEC)
        elif kind == 1:
            section = body[pos + 4 : pos + size]
            nul = section.index(b"\x00")
            seqs.append((section[:nul].decode(), section[nul + 1 :]))
        else:
            raise ValueError(f"unknown OP_MSG section kind {kind}")
        pos += size
    if cmd is None:
        raise ValueError("OP_MSG without a body section")
    return flags, cmd, seqs


def build_op_msg(request_id: int, response_to: int, flags: int, cmd: dict[str, Any], seqs=()) -> bytes:
    payload = struct.pack("<I", flags & ~CHECKSUM_PRESENT) + b"\x00" + bson.encode(cmd, codec_options=CODEC)
    for ident, docs in seqs:
        section = ident.encode() + b"\x00" + docs
        payload += b"\x01" + struct.pack("<i", len(section) + 4) + section
    return _header(16 + len(payload), request_id, response_to, OP_MSG) + payload


def build_op_reply(response_to: int, doc: dict[str, Any]) -> bytes:
    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(doc, codec_options=CODEC)
    return _header(16 + len(payload), next(_ids), response_to, OP_REPLY) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket) -> tuple[bytes, int, int, int, bytes] | None:
    """(raw message, requestID, responseTo, opCode, body) or None at end of stream."""
    header = recv_exact(sock, 16)
    if header is None:
        return None
    length, request_id, response_to, opcode = struct.unpack("<iiii", header)
    if length < 16 or length > MAX_MESSAGE + 1024 * 1024:
        raise ValueError(f"message length {length} out of range")
    body = recv_exact(sock, length - 16)
    if body is None:
        return None
    return header + body, request_id, response_to, opcode, body


# --- users and SCRAM-SHA-256 --------------------------------------------------------


class Users:
    """The users file, re-read whenever it changes (a mounted Secret is replaced in place)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple | None = None
        self._users: dict[tuple[str, str], dict[str, Any]] = {}
        self._salts: dict[tuple[str, str, str], tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._sig != ("missing",):
                log(f"users file {self.path} unreadable ({e.strerror}); keeping {len(self._users)} known user(s)")
                self._sig = ("missing",)
            return
        sig = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        if sig == self._sig:
            return
        self._sig = sig
        try:
            with open(self.path, encoding="utf-8") as f:
                entries = json.load(f)
            users = {}
            for entry in entries:
                if entry.get("name") == "__system":
                    continue  # the keyFile user: internal auth is not modelled
                users[(str(entry.get("db") or "admin"), str(entry["name"]))] = {
                    "name": str(entry["name"]),
                    "db": str(entry.get("db") or "admin"),
                    "password": str(entry["password"]),
                    "roles": [{"name": str(r["name"]), "db": str(r.get("db") or "admin")} for r in entry.get("roles", [])],
                }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log(f"users file {self.path} is not valid ({type(e).__name__}: {e}); keeping {len(self._users)} known user(s)")
            return
        self._users = users
        log(f"users file loaded: {', '.join(f'{db}.{name}' for db, name in sorted(users)) or 'no users'}")

    def get(self, db: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self._reload()
            return self._users.get((db, name))

    def salted(self, user: dict[str, Any]) -> tuple[bytes, bytes]:
        """(salt, SaltedPassword) for the user's current password; stable per password, like stored credentials."""
        key = (user["db"], user["name"], user["password"])
        with self._lock:
            if key not in self._salts:
                salt = os.urandom(28)
                self._salts[key] = (salt, hashlib.pbkdf2_hmac("sha256", user["password"].encode(), salt, SCRAM_ITERATIONS))
            return self._salts[key]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Scram:
    """Server side of one SCRAM-SHA-256 conversation on one connection."""

    def __init__(self, users: Users) -> None:
        self.users = users
        self.conv: dict[str, Any] | None = None

    def start(self, cmd: dict[str, Any], db: str) -> tuple[dict[str, Any], None]:
        mech = cmd.get("mechanism")
        if mech != "SCRAM-SHA-256":
            return error(
                334,
                "MechanismUnavailable",
                f"mechanism {mech} is not supported by this stand-in of mongod/mongos; use SCRAM-SHA-256",
            ), None
        try:
            first = bytes(cmd["payload"]).decode("utf-8")
            cbflag, _authzid, bare = first.split(",", 2)
            fields = dict(part.split("=", 1) for part in bare.split(","))
            name = fields["n"].replace("=2C", ",").replace("=3D", "=")
            client_nonce = fields["r"]
        except (KeyError, ValueError, TypeError):
            return error(17, "ProtocolError", "malformed SCRAM client-first-message"), None
        if cbflag not in ("n", "y"):
            return error(17, "ProtocolError", "channel binding is not supported"), None
        user = self.users.get(db, name)
        if user is None:
            log(f"auth: unknown user {db}.{name}")
            return error(18, "AuthenticationFailed", "Authentication failed."), None
        salt, _ = self.users.salted(user)
        nonce = client_nonce + _b64(os.urandom(24))
        server_first = f"r={nonce},s={_b64(salt)},i={SCRAM_ITERATIONS}"
        self.conv = {
            "user": user,
            "bare": bare,
            "gs2": first[: len(first) - len(bare)],
            "server_first": server_first,
            "nonce": nonce,
            "skip_empty": bool((cmd.get("options") or {}).get("skipEmptyExchange")),
            "step": 1,
        }
        return {"conversationId": 1, "done": False, "payload": Binary(server_first.encode()), "ok": 1.0}, None

    def cont(self, cmd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(reply, the user when this step authenticated them)."""
        conv = self.conv
        if conv is None or cmd.get("conversationId") != 1:
            return error(17, "ProtocolError", "No SASL session state found"), None
        if conv["step"] == 2:  # the empty exchange after the server's final message
            self.conv = None
            return {"conversationId": 1, "done": True, "payload": Binary(b""), "ok": 1.0}, None
        try:
            final = bytes(cmd["payload"]).decode("utf-8")
            without_proof, _, proof_b64 = final.rpartition(",p=")
            fields = dict(part.split("=", 1) for part in without_proof.split(","))
            proof = base64.b64decode(proof_b64)
        except (KeyError, ValueError, TypeError):
            self.conv = None
            return error(17, "ProtocolError", "malformed SCRAM client-final-message"), None
        user = conv["user"]
        _, salted = self.users.salted(user)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = f"{conv['bare']},{conv['server_first']},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if (
            fields.get("r") != conv["nonce"]
            or fields.get("c") != _b64(conv["gs2"].encode())
            or not hmac.compare_digest(proof, expected)
        ):
            self.conv = None
            log(f"auth: wrong proof for user {user['db']}.{user['name']}")
            return error(18, "AuthenticationFailed", "Authentication failed."), None
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        verifier = _b64(hmac.digest(server_key, auth_message, "sha256"))
        done = conv["skip_empty"]
        if done:
            self.conv = None
        else:
            conv["step"] = 2
        return {"conversationId": 1, "done": done, "payload": Binary(f"v={verifier}".encode()), "ok": 1.0}, user


# --- authorization ----------------------------------------------------------------

PRE_AUTH = {
    "hello",
    "isMaster",
    "saslStart",
    "saslContinue",
    "ping",
    "buildInfo",
    "getnonce",
    "endSessions",
    "getLastError",
    "getFreeMonitoringStatus",
    "whatsmyuri",
    "connectionStatus",
    "logout",
}
ALWAYS = PRE_AUTH | {"getMore", "killCursors", "listDatabases", "killAllSessions", "hostInfo", "getParameter"}
READS = {"find", "count", "distinct", "listCollections", "listIndexes", "collStats", "dbStats", "dataSize", "explain"}
WRITES = {
    "insert",
    "update",
    "delete",
    "findAndModify",
    "createIndexes",
    "dropIndexes",
    "drop",
    "create",
    "collMod",
    "dropDatabase",
    "renameCollection",
    "compact",
    "reIndex",
    "validate",
}
CLUSTER_READS = {"listShards", "balancerStatus", "replSetGetStatus", "replSetGetConfig", "serverStatus", "getCmdLineOpts"}
CLUSTER_WRITES = {
    "enableSharding",
    "shardCollection",
    "balancerStart",
    "balancerStop",
    "reshardCollection",
    "refineCollectionShardKey",
    "addShard",
    "removeShard",
    "movePrimary",
    "moveChunk",
    "split",
    "replSetReconfig",
    "replSetStepDown",
    "setFeatureCompatibilityVersion",
    "shutdown",
}
ALIASES = {"ismaster": "isMaster", "buildinfo": "buildInfo"}


def _has(roles: list[dict[str, str]], names: set[str], db: str) -> bool:
    return any(r["name"] in names and r["db"] == db for r in roles)


def can_read(roles: list[dict[str, str]], db: str) -> bool:
    return (
        _has(roles, {"read", "readWrite", "dbOwner", "dbAdmin"}, db)
        or _has(roles, {"readAnyDatabase", "readWriteAnyDatabase", "root"}, "admin")
        or (db in ("admin", "config", "local") and _has(roles, {"clusterMonitor", "clusterManager", "clusterAdmin"}, "admin"))
    )


def can_write(roles: list[dict[str, str]], db: str) -> bool:
    return _has(roles, {"readWrite", "dbOwner"}, db) or _has(roles, {"readWriteAnyDatabase", "root"}, "admin")


def can_cluster(roles: list[dict[str, str]], read_only: bool) -> bool:
    names = {"clusterManager", "clusterAdmin", "root"} | ({"clusterMonitor"} if read_only else set())
    return _has(roles, names, "admin")


def _pipeline_writes(cmd: dict[str, Any]) -> list[str]:
    """The databases an aggregate writes to ($out/$merge), empty for a read-only pipeline."""
    dbs = []
    for stage in cmd.get("pipeline") or []:
        if not isinstance(stage, dict):
            continue
        for op in ("$out", "$merge"):
            if op in stage:
                target = stage[op]
                into = target.get("into", target) if isinstance(target, dict) else target
                dbs.append(into.get("db", "") if isinstance(into, dict) else "")
    return dbs


def authorize(name: str, cmd: dict[str, Any], db: str, roles: list[dict[str, str]]) -> bool:
    """Coarse: the command's kind (read, write, cluster) against the user's roles on that database."""
    if name in ALWAYS:
        return True
    if name == "aggregate":
        targets = _pipeline_writes(cmd)
        if targets:
            return all(can_write(roles, t or db) for t in targets) and can_read(roles, db)
        return can_read(roles, db)
    if name in READS:
        return can_read(roles, db)
    if name in WRITES:
        return can_write(roles, db)
    if name in CLUSTER_READS:
        return can_cluster(roles, read_only=True)
    if name in CLUSTER_WRITES:
        return can_cluster(roles, read_only=False)
    return True  # unknown to the double: the store answers (usually "no such command")


# --- the servers ------------------------------------------------------------------


class Double:
    """What mongos and a member share: the connection loop, handshake, SCRAM and authorization."""

    kind = "?"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.users = Users(args.users)
        self.upstream: tuple[str, int] | None = None
        self.handlers: dict[str, Any] = {}

    # handshake -----------------------------------------------------------------
    def topology(self) -> dict[str, Any]:
        raise NotImplementedError

    def hello(self, session: Session, cmd: dict[str, Any], name: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.topology()
        primary = doc.pop("_primary")
        doc = {("isWritablePrimary" if name == "hello" else "ismaster"): primary, **doc}
        doc.update(
            maxBsonObjectSize=MAX_BSON,
            maxMessageSizeBytes=MAX_MESSAGE,
            maxWriteBatchSize=MAX_WRITE_BATCH,
            localTime=datetime.datetime.now(datetime.UTC),
            logicalSessionTimeoutMinutes=30,
            connectionId=session.id,
            minWireVersion=0,
            maxWireVersion=MAX_WIRE_VERSION,
            readOnly=False,
        )
        if cmd.get("helloOk"):
            doc["helloOk"] = True
        mechs = cmd.get("saslSupportedMechs")
        if isinstance(mechs, str) and "." in mechs:
            udb, uname = mechs.split(".", 1)
            if self.users.get(udb, uname) is not None:
                doc["saslSupportedMechs"] = ["SCRAM-SHA-256"]
        doc["ok"] = 1.0
        return doc

    # dispatch ------------------------------------------------------------------
    def dispatch(self, session: Session, cmd: dict[str, Any]) -> Any:
        """A reply document, or FORWARD."""
        raw_name = next(iter(cmd), "")
        name = ALIASES.get(raw_name.lower(), raw_name)
        db = str(cmd.get("$db", "admin"))
        if name in ("hello", "isMaster"):
            reply = self.hello(session, cmd, name)
            if not session.greeted:  # once per connection: monitors repeat it every few seconds
                session.greeted = True
                session.note(db, raw_name, reply)
            return reply
        if name == "saslStart":
            reply, _ = session.scram.start(cmd, db)
            session.note(db, name, reply)
            return reply
        if name == "saslContinue":
            reply, user = session.scram.cont(cmd)
            if user is not None:
                session.user = (user["db"], user["name"])
                log(f"conn {session.id}: authenticated as {user['db']}.{user['name']}")
            session.note(db, name, reply)
            return reply
        if name in ("ping", "endSessions"):
            return {"ok": 1.0}
        if name == "logout":
            session.user = None
            return {"ok": 1.0}
        if name == "connectionStatus":
            return self.connection_status(session)
        user = self.users.get(*session.user) if session.user else None
        if session.user and user is None:
            log(f"conn {session.id}: user {session.user[0]}.{session.user[1]} no longer exists; unauthenticated")
            session.user = None
        if user is None:
            if name in PRE_AUTH:
                return FORWARD if self.upstream else self.local_answer(name)
            reply = error(13, "Unauthorized", f"command {raw_name} requires authentication")
            session.note(db, raw_name, reply)
            return reply
        if not authorize(name, cmd, db, user["roles"]):
            reply = error(
                13,
                "Unauthorized",
                f"not authorized on {db} to execute command {{ {raw_name}: {_render(cmd.get(raw_name))}, $db: {json.dumps(db)} }}",
            )
            session.note(db, raw_name, reply)
            return reply
        handler = self.handlers.get(name)
        if handler is not None:
            try:
                reply = handler(session, cmd, db)
            except Exception as e:  # a store failure answers this command, the connection lives on
                reply = _store_error(e)
            if reply is not FORWARD:
                session.note(db, raw_name, reply)
                return reply
        if self.upstream is None:
            if name in ALWAYS:
                return self.local_answer(name)
            # not 13435 NotPrimaryNoSecondaryOk: drivers take that for a state change (pymongo marks the
            # server Unknown and drops its pool), and this member's role has not changed
            reply = error(
                20,
                "IllegalOperation",
                f"this stand-in member ({self.args.me}) stores no data; command {raw_name} is only answered "
                "by the store (the first member of the first shard) and through mongos",
            )
            session.note(db, raw_name, reply)
            return reply
        return FORWARD

    def local_answer(self, name: str) -> dict[str, Any]:
        if name == "buildInfo":
            return {
                "version": "7.0.42",
                "versionArray": [7, 0, 42, 0],
                "gitVersion": "mongo-double",
                "bits": 64,
                "maxBsonObjectSize": MAX_BSON,
                "ok": 1.0,
            }
        if name == "getLastError":
            return {"n": 0, "err": None, "ok": 1.0}
        if name == "listDatabases":
            return {"databases": [], "totalSize": 0, "ok": 1.0}
        if name == "getMore":
            return error(43, "CursorNotFound", "this stand-in member stores no data and has no cursors")
        return {"ok": 1.0}

    def connection_status(self, session: Session) -> dict[str, Any]:
        user = self.users.get(*session.user) if session.user else None
        users = [{"user": user["name"], "db": user["db"]}] if user else []
        roles = [{"role": r["name"], "db": r["db"]} for r in user["roles"]] if user else []
        return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": roles}, "ok": 1.0}

    # serving -------------------------------------------------------------------
    def serve(self) -> None:
        double = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                Session(double, self.request, self.client_address).run()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        server = Server((self.args.bind, self.args.port), Handler)
        log(
            f"{self.kind} listening on {self.args.bind}:{self.args.port}"
            + (f", store {self.upstream[0]}:{self.upstream[1]}" if self.upstream else ", no store")
        )
        try:
            server.serve_forever()
        finally:
            server.server_close()


def _store_error(e: Exception) -> dict[str, Any]:
    from pymongo.errors import ConnectionFailure, OperationFailure

    if isinstance(e, OperationFailure):
        return error(int(e.code or 8), "StoreError", f"the store refused: {e.details.get('errmsg') if e.details else e}")
    if isinstance(e, ConnectionFailure):
        return error(6, "HostUnreachable", f"the store is unreachable: {e}")
    log(f"internal error: {type(e).__name__}: {e}")
    return error(1, "InternalError", f"mongo-double: {type(e).__name__}: {e}")


class Session:
    """One client connection (and its one upstream connection to the store)."""

    def __init__(self, double: Double, sock: socket.socket, peer: tuple) -> None:
        self.double = double
        self.sock = sock
        self.peer = f"{peer[0]}:{peer[1]}"
        self.id = next(_connections)
        self.greeted = False
        self.scram = Scram(double.users)
        self.user: tuple[str, str] | None = None
        self.up: socket.socket | None = None
        self.unwanted: set[int] = set()  # requestIDs of forwarded moreToCome requests

    def note(self, db: str, name: str, reply: dict[str, Any]) -> None:
        who = f"{self.user[0]}.{self.user[1]}" if self.user else "-"
        outcome = "ok" if reply.get("ok") else f"error {reply.get('code')} {reply.get('codeName')}"
        log(f"conn {self.id} [{who}] {db}.{name}: {outcome}")

    def run(self) -> None:
        messages = 0  # the kubelet's TCP probes open and close without a message: not logged
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                msg = recv_message(self.sock)
                if msg is None:
                    break
                if not messages:
                    log(f"conn {self.id} from {self.peer} opened")
                messages += 1
                raw, request_id, _, opcode, body = msg
                if opcode == OP_MSG:
                    if not self.on_msg(raw, request_id, body):
                        break
                elif opcode == OP_QUERY:
                    self.on_query(request_id, body)
                else:
                    log(f"conn {self.id}: unsupported opcode {opcode}; closing")
                    break
        except (OSError, ValueError, bson.errors.BSONError) as e:
            log(f"conn {self.id}: closing after {type(e).__name__}: {e}")
        finally:
            for s in (self.up, self.sock):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            if messages:
                log(f"conn {self.id} from {self.peer} closed after {messages} message(s)")

    def on_msg(self, raw: bytes, request_id: int, body: bytes) -> bool:
        flags, cmd, seqs = parse_op_msg(body)
        more = bool(flags & MORE_TO_COME)
        reply = self.double.dispatch(self, cmd)
        if reply is not FORWARD:
            if not more:
                self.sock.sendall(build_op_msg(next(_ids), request_id, 0, reply))
            return True
        config = cmd.get("$db") == "config"
        if config:
            raw = self._config_request(raw, request_id, flags, cmd, seqs)
        return self.forward(raw, request_id, expect_reply=not more, translate=config)

    def _config_request(self, raw: bytes, request_id: int, flags: int, cmd: dict[str, Any], seqs) -> bytes:
        """MinKey/MaxKey in a request on the config database become the stored markers."""
        docs = [(ident, bson.decode_all(data, CODEC)) for ident, data in seqs]
        if not _has_bound_types(cmd) and not any(_has_bound_types(d) for _, ds in docs for d in ds):
            return raw
        new_seqs = [(i, b"".join(bson.encode(to_store(d), codec_options=CODEC) for d in ds)) for i, ds in docs]
        _, response_to = struct.unpack_from("<ii", raw, 4)
        return build_op_msg(request_id, response_to, flags, to_store(cmd), new_seqs)

    def _connect_upstream(self) -> socket.socket:
        if self.up is None:
            assert self.double.upstream is not None
            self.up = socket.create_connection(self.double.upstream, timeout=10)
            self.up.settimeout(None)
            self.up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.up

    def forward(self, raw: bytes, request_id: int, expect_reply: bool, translate: bool) -> bool:
        """Send the request to the store, relay its reply (several for exhaust); False closes the client."""
        try:
            up = self._connect_upstream()
        except OSError as e:
            host, port = self.double.upstream or ("?", 0)
            log(f"conn {self.id}: store {host}:{port} unreachable ({e})")
            if expect_reply:
                reply = error(6, "HostUnreachable", f"the store {host}:{port} is unreachable: {e}")
                self.sock.sendall(build_op_msg(next(_ids), request_id, 0, reply))
            return True
        up.sendall(raw)
        if not expect_reply:
            # FerretDB answers moreToCome requests anyway: that reply is dropped when it arrives
            self.unwanted.add(request_id)
            return True
        while True:
            msg = recv_message(up)
            if msg is None:
                log(f"conn {self.id}: the store closed the connection")
                return False
            reply_raw, reply_id, response_to, opcode, body = msg
            if response_to in self.unwanted:
                self.unwanted.discard(response_to)
                continue
            flags = struct.unpack_from("<I", body, 0)[0] if opcode == OP_MSG else 0
            if translate and opcode == OP_MSG and MARK_BYTES in body:
                _, doc, _ = parse_op_msg(body)
                reply_raw = build_op_msg(reply_id, response_to, flags, from_store(doc))
            self.sock.sendall(reply_raw)
            if not flags & MORE_TO_COME:
                break
        self.unwanted.clear()  # the store answers in order: nothing older is still coming
        return True

    def on_query(self, request_id: int, body: bytes) -> None:
        """Legacy OP_QUERY: only the hello/isMaster handshake, like mongod 6+; OP_REPLY back."""
        pos = 4
        nul = body.index(b"\x00", pos)
        collection = body[pos:nul].decode()
        pos = nul + 1 + 8
        (size,) = struct.unpack_from("<i", body, pos)
        query = bson.decode(body[pos : pos + size], CODEC)
        cmd = query["$query"] if isinstance(query.get("$query"), dict) else query  # a wrapped command, with $readPreference
        name = next(iter(cmd), "") if isinstance(cmd, dict) else ""
        canonical = ALIASES.get(name.lower(), name)
        if collection.endswith(".$cmd") and canonical in ("hello", "isMaster"):
            reply = self.double.hello(self, cmd, canonical)
            if not self.greeted:
                self.greeted = True
                self.note(collection.split(".", 1)[0], f"{name} (OP_QUERY)", reply)
        else:
            reply = error(
                352,
                "UnsupportedOpQueryCommand",
                f"Unsupported OP_QUERY command: {name}. The client driver may require an upgrade. "
                "For more details see https://dochub.mongodb.org/core/legacy-opcode-removal",
            )
            reply["$err"] = reply["errmsg"]
            self.note(collection.split(".", 1)[0], name, reply)
        self.sock.sendall(build_op_reply(request_id, reply))


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


class Mongos(Double):
    kind = "mongos"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.upstream = _hostport(args.upstream)
        self.shards: list[tuple[str, list[str]]] = []
        for part in filter(None, (p.strip() for p in args.shards.split(";"))):
            name, _, hosts = part.partition("/")
            self.shards.append((name, [h for h in hosts.split(",") if h]))
        if not self.shards:
            raise SystemExit("mongo-double: --shards names no shard")
        self.balancer = args.balancer == "on"
        self._client = None
        self._meta_lock = threading.Lock()
        self._client_lock = threading.Lock()
        self.handlers = {
            "listShards": self.list_shards,
            "balancerStatus": self.balancer_status,
            "balancerStart": lambda s, c, d: self.set_balancer(d, True),
            "balancerStop": lambda s, c, d: self.set_balancer(d, False),
            "enableSharding": self.enable_sharding,
            "shardCollection": self.shard_collection,
            "replSetGetStatus": lambda s, c, d: error(59, "CommandNotFound", "replSetGetStatus is not supported through mongos"),
            "aggregate": self.aggregate,
        }

    def topology(self) -> dict[str, Any]:
        return {"_primary": True, "msg": "isdbgrid"}

    @property
    def store(self):
        """A pymongo client to the store, for the metadata the router itself reads and writes."""
        with self._client_lock:
            if self._client is None:
                self._client = self._connect_store()
        return self._client

    def _connect_store(self):
        from pymongo import MongoClient

        host, port = self.upstream
        return MongoClient(
            host=host,
            port=port,
            directConnection=True,
            serverSelectionTimeoutMS=10_000,
            uuidRepresentation="standard",
            appname="mongo-double-mongos",
        )

    def _admin_only(self, db: str, name: str) -> dict[str, Any] | None:
        if db != "admin":
            return error(13, "Unauthorized", f"{name} may only be run against the admin database.")
        return None

    def list_shards(self, session: Session, cmd: dict[str, Any], db: str) -> dict[str, Any]:
        shards = [{"_id": name, "host": f"{name}/{','.join(hosts)}", "state": 1} for name, hosts in self.shards]
        return {"shards": shards, "ok": 1.0}

    def balancer_status(self, session: Session, cmd: dict[str, Any], db: str) -> dict[str, Any]:
        return {"mode": "full" if self.balancer else "off", "inBalancerRound": False, "numBalancerRounds": Int64(0), "ok": 1.0}

    def set_balancer(self, db: str, on: bool) -> dict[str, Any]:
        refused = self._admin_only(db, "balancerStart" if on else "balancerStop")
        if refused:
            return refused
        self.balancer = on
        return {"ok": 1.0}

    def _ensure_database(self, name: str) -> None:
        self.store["config"]["databases"].update_one(
            {"_id": name},
            {"$setOnInsert": {"primary": self.shards[0][0]}, "$set": {"partitioned": True}},
            upsert=True,
        )

    def enable_sharding(self, session: Session, cmd: dict[str, Any], db: str) -> dict[str, Any]:
        refused = self._admin_only(db, "enableSharding")
        if refused:
            return refused
        name = cmd.get("enableSharding")
        if not isinstance(name, str) or not name or "." in name or name in ("admin", "config", "local"):
            return error(73, "InvalidNamespace", f"invalid database name: {name!r}")
        with self._meta_lock:
            self._ensure_database(name)
        return {"ok": 1.0}

    def shard_collection(self, session: Session, cmd: dict[str, Any], db: str) -> dict[str, Any]:
        refused = self._admin_only(db, "shardCollection")
        if refused:
            return refused
        ns = cmd.get("shardCollection")
        key = cmd.get("key")
        if not isinstance(ns, str) or "." not in ns or ns.startswith(".") or ns.endswith("."):
            return error(73, "InvalidNamespace", f"invalid namespace: {ns!r}")
        if not isinstance(key, dict) or not key:
            return error(9, "FailedToParse", "shardCollection needs a non-empty key document")
        for field, direction in key.items():
            if direction != "hashed" and not (isinstance(direction, int | float) and direction == 1):
                return error(2, "BadValue", f"Unsupported shard key pattern {_render(key)}: field {field} must be 1 or 'hashed'")
        hashed = "hashed" in key.values()
        unique = bool(cmd.get("unique"))
        if hashed and unique:
            return error(72, "InvalidOptions", "hashed shard keys cannot be declared unique.")
        dbname, coll = ns.split(".", 1)
        config = self.store["config"]
        with self._meta_lock:
            existing = config["collections"].find_one({"_id": ns})
            if existing is not None and not existing.get("dropped"):
                if list(existing["key"].items()) == [(k, v if v == "hashed" else 1) for k, v in key.items()]:
                    return {"collectionsharded": ns, "collectionUUID": existing.get("uuid"), "ok": 1.0}
                return error(
                    23,
                    "AlreadyInitialized",
                    f"sharding already enabled for collection {ns} with options {{ _id: {json.dumps(ns)}, "
                    f"key: {_render(dict(existing['key']))}, unique: {_render(bool(existing.get('unique')))} }}",
                )
            self._ensure_database(dbname)
            self._shard_key_index(dbname, coll, key, unique, hashed)
            coll_uuid = Binary(uuid.uuid4().bytes, 4)
            now = datetime.datetime.now(datetime.UTC)
            config["collections"].replace_one(
                {"_id": ns},
                {
                    "_id": ns,
                    "lastmodEpoch": ObjectId(),
                    "lastmod": now,
                    "key": {k: (v if v == "hashed" else 1) for k, v in key.items()},
                    "unique": unique,
                    "uuid": coll_uuid,
                    "noBalance": False,
                },
                upsert=True,
            )
            config["chunks"].insert_many(self._chunks(key, hashed, coll_uuid, now))
        return {"collectionsharded": ns, "collectionUUID": coll_uuid, "ok": 1.0}

    def _shard_key_index(self, dbname: str, coll: str, key: dict[str, Any], unique: bool, hashed: bool) -> None:
        """MongoDB creates the shard key's index (and the collection); FerretDB has no hashed indexes."""
        from pymongo.errors import CollectionInvalid, OperationFailure

        database = self.store[dbname]
        if coll not in database.list_collection_names(filter={"name": coll}):
            try:
                database.create_collection(coll)
            except CollectionInvalid:
                pass
        if hashed:
            log(f"shard key index {dbname}.{coll} {_render(key)} not created: FerretDB has no hashed indexes")
            return
        if list(key) == ["_id"]:
            return  # the _id index exists
        try:
            database[coll].create_index(list(key.items()), unique=unique)
        except OperationFailure as e:
            log(f"shard key index {dbname}.{coll} {_render(key)} refused by FerretDB: {e}")

    def _chunks(self, key: dict[str, Any], hashed: bool, coll_uuid: Binary, now: datetime.datetime) -> list[dict[str, Any]]:
        """Hashed: two chunks per shard over the hashed space; ranged: one chunk on the primary shard."""
        names = [name for name, _ in self.shards]
        fields = list(key)

        def bound(value: Any) -> dict[str, Any]:
            """A chunk bound: MinKey/MaxKey on every field at the ends; a split point on the first field."""
            if isinstance(value, str):
                return dict.fromkeys(fields, value)
            return {f: (value if i == 0 else MIN_MARK) for i, f in enumerate(fields)}

        if hashed:
            n = 2 * len(names)
            points = [MIN_MARK, *(Int64(-(2**63) + (2**64 * i) // n) for i in range(1, n)), MAX_MARK]
            owners = [names[i // 2] for i in range(n)]
        else:
            points, owners = [MIN_MARK, MAX_MARK], [names[0]]
        return [
            {
                "_id": ObjectId(),
                "uuid": coll_uuid,
                "min": bound(points[i]),
                "max": bound(points[i + 1]),
                "shard": owner,
                "lastmod": now,
                "onCurrentShardSince": now,
            }
            for i, owner in enumerate(owners)
        ]

    def aggregate(self, session: Session, cmd: dict[str, Any], db: str) -> Any:
        if cmd.get("pipeline") != [{"$collStats": {"count": {}}}] or not isinstance(cmd.get("aggregate"), str):
            return FORWARD
        ns = f"{db}.{cmd['aggregate']}"
        meta = self.store["config"]["collections"].find_one({"_id": ns})
        if meta is None or meta.get("dropped"):
            return FORWARD
        count = self.store[db][cmd["aggregate"]].count_documents({})
        now = datetime.datetime.now(datetime.UTC)
        docs = [
            {"ns": ns, "shard": name, "host": hosts[0] if hosts else name, "localTime": now, "count": count if i == 0 else 0}
            for i, (name, hosts) in enumerate(self.shards)
        ]
        return {"cursor": {"id": Int64(0), "ns": ns, "firstBatch": docs}, "ok": 1.0}


class Member(Double):
    kind = "member"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.hosts = [h for h in args.hosts.split(",") if h]
        if not self.hosts:
            raise SystemExit("mongo-double: --hosts names no host")
        if args.me not in self.hosts:
            log(f"warning: --me {args.me} is not one of --hosts")
        self.store_process: Store | None = None
        if args.ferretdb:
            local = "127.0.0.1" if args.bind in ("0.0.0.0", "") else args.bind
            self.upstream = (local, args.store_port)
            self.store_process = Store(args.ferretdb, args.data, args.bind, args.store_port)
        self.handlers = {"replSetGetStatus": self.repl_set_get_status}

    @property
    def primary(self) -> bool:
        return self.args.me == self.hosts[0]

    def topology(self) -> dict[str, Any]:
        return {
            "_primary": self.primary,
            "secondary": not self.primary,
            "setName": self.args.replset,
            "setVersion": 1,
            "hosts": self.hosts,
            "primary": self.hosts[0],
            "me": self.args.me,
        }

    def repl_set_get_status(self, session: Session, cmd: dict[str, Any], db: str) -> dict[str, Any]:
        if db != "admin":
            return error(13, "Unauthorized", "replSetGetStatus may only be run against the admin database.")
        members = [
            {
                "_id": i,
                "name": host,
                "health": 1.0,
                "state": 1 if i == 0 else 2,
                "stateStr": "PRIMARY" if i == 0 else "SECONDARY",
                "self": host == self.args.me,
            }
            for i, host in enumerate(self.hosts)
        ]
        return {
            "set": self.args.replset,
            "date": datetime.datetime.now(datetime.UTC),
            "myState": 1 if self.primary else 2,
            "term": Int64(1),
            "members": members,
            "ok": 1.0,
        }


class Store:
    """FerretDB as a child process: started, waited for, restarted when it dies, stopped on SIGTERM."""

    def __init__(self, binary: str, data: str, bind: str, port: int) -> None:
        self.binary, self.data, self.bind, self.port = binary, data, bind, port
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()

    def command(self) -> list[str]:
        return [
            self.binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data.rstrip('/')}/",
            f"--listen-addr={self.bind}:{self.port}",
            "--telemetry=disable",
            "--debug-addr=-",
            f"--state-dir={self.data}",
            "--log-level=WARN",
        ]

    def start(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        threading.Thread(target=self._supervise, name="ferretdb", daemon=True).start()

    @staticmethod
    def _die_with_parent() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def _supervise(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, preexec_fn=self._die_with_parent)
            log(f"FerretDB started (pid {self.proc.pid}) on {self.bind}:{self.port}, data {self.data}")
            self._wait_ready()
            rc = self.proc.wait()
            if self.stopping.is_set():
                break
            delay = 1.0 if time.monotonic() - started > 30 else min(delay * 2, 30.0)
            log(f"FerretDB exited with code {rc}; restarting in {delay:.0f}s")
            self.stopping.wait(delay)

    def _wait_ready(self) -> None:
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "") else self.bind
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                with socket.create_connection((host, self.port), timeout=1):
                    log(f"FerretDB ready on {host}:{self.port}")
                    return
            except OSError:
                time.sleep(0.2)
        log("FerretDB did not open its port")

    def stop(self) -> None:
        self.stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log(f"FerretDB stopped (code {proc.returncode})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mongo-double", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("member", "mongos"):
        p = sub.add_parser(role)
        p.add_argument("--port", type=int, default=27017)
        p.add_argument("--bind", default="0.0.0.0")
        p.add_argument("--users", required=True, help="users.json: [{name, db, password, roles: [{name, db}]}]")
    member = sub.choices["member"]
    member.add_argument("--replset", required=True)
    member.add_argument("--hosts", required=True, help="host:port of every member, the first one primary")
    member.add_argument("--me", required=True)
    member.add_argument("--ferretdb", help="run this FerretDB binary as the store")
    member.add_argument("--data", default="/data/db")
    member.add_argument("--store-port", type=int, default=27019)
    mongos = sub.choices["mongos"]
    mongos.add_argument("--upstream", required=True, help="the store (FerretDB) as HOST:PORT")
    mongos.add_argument("--shards", required=True, help="'rs0/h0:27017,h1:27017;rs1/h2:27017'")
    mongos.add_argument("--balancer", choices=("on", "off"), default="on")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    double: Double = Member(args) if args.role == "member" else Mongos(args)
    store = getattr(double, "store_process", None)

    def stop(signum: int, _frame: Any) -> None:
        log(f"signal {signum}: stopping")
        if store is not None:
            store.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if store is not None:
        store.start()
    try:
        double.serve()
    finally:
        if store is not None:
            store.stop()


if __name__ == "__main__":
    main()
