"""Test double of a sharded cluster's mongos (and of shard members) over the real wire protocol.

A :class:`MongosDouble` is a MockupDB server on 127.0.0.1 that answers the
commands datacloud.sharding sends, from a small in-memory model of the cluster
(shards, sharded collections, indexes, chunks, documents), and records every
command it received. A :class:`MemberDouble` answers ``replSetGetStatus`` for
one shard replica set. Neither is a MongoDB: they exist only so the command
flow can be checked exactly, since a sharded cluster cannot run here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from bson import Binary
from mockupdb import MockupDB

HANDSHAKE = {"hello", "ismaster"}
WRITES = {"enableSharding", "shardCollection", "createIndexes", "balancerStart", "balancerStop", "reshardCollection", "drop"}


def _cursor(ns: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cursor": {"id": 0, "ns": ns, "firstBatch": docs}}


class ScramServer:
    """SCRAM-SHA-256 (RFC 7677) as mongod speaks it, for the users given: the
    doubles check that a client authenticates with the right password."""

    ITERATIONS = 4096

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.conversations: dict[int, dict[str, Any]] = {}
        self.authenticated: list[str] = []

    def handle(self, request: Any) -> bool | None:
        name = request.command_name
        if name == "saslStart":
            if request.doc.get("mechanism") != "SCRAM-SHA-256":
                return request.command_err(334, f"unsupported mechanism {request.doc.get('mechanism')}")
            first = bytes(request.doc["payload"]).decode()
            bare = first.split(",", 2)[2]
            fields = dict(part.split("=", 1) for part in bare.split(","))
            user, client_nonce = fields["n"], fields["r"]
            if user not in self.users:
                return request.command_err(18, "Authentication failed.")
            salt = os.urandom(16)
            nonce = client_nonce + base64.b64encode(os.urandom(18)).decode()
            server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={self.ITERATIONS}"
            cid = len(self.conversations) + 1
            self.conversations[cid] = {"user": user, "bare": bare, "server_first": server_first, "salt": salt, "nonce": nonce}
            return request.ok(conversationId=cid, done=False, payload=Binary(server_first.encode()))
        if name == "saslContinue":
            conv = self.conversations.get(request.doc["conversationId"])
            if conv is None:
                return request.command_err(17, "No SASL session state found")
            if conv.get("done"):
                return request.ok(conversationId=request.doc["conversationId"], done=True, payload=Binary(b""))
            final = bytes(request.doc["payload"]).decode()
            without_proof, _, proof = final.rpartition(",p=")
            salted = hashlib.pbkdf2_hmac("sha256", self.users[conv["user"]].encode(), conv["salt"], self.ITERATIONS)
            client_key = hmac.digest(salted, b"Client Key", "sha256")
            stored_key = hashlib.sha256(client_key).digest()
            auth_message = f"{conv['bare']},{conv['server_first']},{without_proof}".encode()
            signature = hmac.digest(stored_key, auth_message, "sha256")
            expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
            if f"r={conv['nonce']}" not in without_proof or not hmac.compare_digest(base64.b64decode(proof), expected):
                return request.command_err(18, "Authentication failed.")
            server_key = hmac.digest(salted, b"Server Key", "sha256")
            verifier = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
            conv["done"] = True
            self.authenticated.append(conv["user"])
            return request.ok(conversationId=request.doc["conversationId"], done=True, payload=Binary(f"v={verifier}".encode()))
        return None


@dataclass
class Command:
    db: str
    name: str
    doc: dict[str, Any]


@dataclass
class MemberDouble:
    """One shard replica set, answering replSetGetStatus for all its members."""

    set_name: str
    members: list[dict[str, Any]] = field(default_factory=list)
    server: MockupDB | None = None
    scram: ScramServer | None = None  # when set, commands need an authenticated user

    def start(self) -> str:
        self.server = MockupDB(auto_ismaster=True, max_wire_version=21)
        self.server.run()
        self.server.autoresponds(self._handle)
        self.reset()
        return self.address

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address_string

    def reset(self) -> None:
        """Three healthy members: one primary, two secondaries."""
        self.members = [
            {"name": f"{self.set_name}-{i}:27017", "health": 1, "stateStr": "PRIMARY" if i == 0 else "SECONDARY"}
            for i in range(3)
        ]
        self.scram = None

    def _handle(self, request: Any) -> bool:
        if request.command_name.lower() in HANDSHAKE:
            return False
        if self.scram is not None:
            handled = self.scram.handle(request)
            if handled is not None:
                return handled
        if request.command_name == "replSetGetStatus":
            return request.ok(set=self.set_name, members=self.members)
        return request.command_err(59, f"no such command: {request.command_name}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class MongosDouble:
    shards: list[dict[str, Any]] = field(default_factory=list)
    balancer_mode: str = "full"
    databases: set[str] = field(default_factory=set)
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)  # ns -> {key, unique, uuid}
    indexes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # ns -> index specs
    chunks: dict[str, dict[str, int]] = field(default_factory=dict)  # ns -> shard -> chunks
    documents: dict[str, dict[str, int]] = field(default_factory=dict)  # ns -> shard -> documents
    received: list[Command] = field(default_factory=list)
    server: MockupDB | None = None
    scram: ScramServer | None = None  # when set, clients must authenticate as one of its users

    def start(self) -> str:
        self.server = MockupDB(auto_ismaster=True, max_wire_version=21)
        self.server.run()
        self.server.autoresponds(self._handle)
        return self.server.uri

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def reset(self, shards: list[dict[str, Any]]) -> None:
        """A fresh cluster with these shards: nothing sharded, no indexes, balancer on."""
        self.shards = shards
        self.balancer_mode = "full"
        self.databases = set()
        self.collections = {}
        self.indexes = {}
        self.chunks = {}
        self.documents = {}
        self.received = []
        self.scram = None

    # --- what the tests look at ---

    def writes(self) -> list[Command]:
        return [c for c in self.received if c.name in WRITES]

    def shard_collection(self, ns: str, key: dict[str, Any], unique: bool = False) -> None:
        """Put the model in the state 'ns is sharded on key' (as if done earlier)."""
        self.databases.add(ns.split(".", 1)[0])
        self.collections[ns] = {"_id": ns, "key": key, "unique": unique, "uuid": Binary(uuid.uuid4().bytes, 4)}
        name = "_".join(f"{k}_{v}" for k, v in key.items())
        self.indexes.setdefault(ns, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
        if name != "_id_1":
            self.indexes[ns].append({"v": 2, "key": key, "name": name})
        names = [s["_id"] for s in self.shards]
        hashed = "hashed" in key.values()
        # Hashed keys are pre-split over every shard; ranged keys start as one chunk on the first shard.
        self.chunks[ns] = {s: 2 for s in names} if hashed else {names[0]: 1} if names else {}

    # --- the wire side ---

    def _handle(self, request: Any) -> bool:
        name = request.command_name
        if name.lower() in HANDSHAKE:
            return False
        if self.scram is not None:
            handled = self.scram.handle(request)
            if handled is not None:
                return handled
        doc = {k: v for k, v in request.doc.items() if not k.startswith("$") and k != "lsid"}
        db = request.doc.get("$db", "")
        self.received.append(Command(db, name, doc))
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            return request.command_err(59, f"no such command: '{name}'")
        reply = handler(db, doc)
        if isinstance(reply, tuple):
            return request.command_err(*reply)
        return request.ok(reply)

    def _cmd_listShards(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {"shards": self.shards}

    def _cmd_balancerStatus(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {"mode": self.balancer_mode, "inBalancerRound": False, "numBalancerRounds": 0}

    def _cmd_enableSharding(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        self.databases.add(doc["enableSharding"])
        return {}

    def _cmd_shardCollection(self, db: str, doc: dict[str, Any]) -> dict[str, Any] | tuple[int, str]:
        ns = doc["shardCollection"]
        existing = self.collections.get(ns)
        if existing is not None and dict(existing["key"]) != dict(doc["key"]):
            return (23, f"sharding already enabled for collection {ns} with options {existing}")
        self.shard_collection(ns, dict(doc["key"]), bool(doc.get("unique")))
        return {"collectionsharded": ns}

    def _cmd_find(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        wanted = doc.get("filter", {}).get("_id")
        if (db, doc["find"]) == ("config", "databases"):
            rows = [{"_id": d, "primary": self.shards[0]["_id"] if self.shards else ""} for d in sorted(self.databases)]
        elif (db, doc["find"]) == ("config", "collections"):
            rows = list(self.collections.values())
        else:
            rows = []
        rows = [r for r in rows if wanted is None or r["_id"] == wanted]
        return _cursor(f"{db}.{doc['find']}", rows[: doc.get("limit") or None])

    def _cmd_listIndexes(self, db: str, doc: dict[str, Any]) -> dict[str, Any] | tuple[int, str]:
        ns = f"{db}.{doc['listIndexes']}"
        if ns not in self.indexes:
            return (26, f"ns does not exist: {ns}")
        return _cursor(ns, self.indexes[ns])

    def _cmd_createIndexes(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        ns = f"{db}.{doc['createIndexes']}"
        specs = self.indexes.setdefault(ns, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
        before = len(specs)
        for spec in doc["indexes"]:
            if spec["name"] not in {s["name"] for s in specs}:
                specs.append({"v": 2, **dict(spec)})
        return {"numIndexesBefore": before, "numIndexesAfter": len(specs)}

    def _cmd_aggregate(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        pipeline = doc["pipeline"]
        if (db, doc["aggregate"]) == ("config", "chunks"):
            wanted = pipeline[0]["$match"]["uuid"]
            ns = next((n for n, c in self.collections.items() if c["uuid"] == wanted), None)
            rows = [{"_id": s, "n": n} for s, n in self.chunks.get(ns, {}).items()]
            return _cursor("config.chunks", rows)
        if "$collStats" in pipeline[0]:
            ns = f"{db}.{doc['aggregate']}"
            rows = [{"ns": ns, "shard": s, "count": n} for s, n in self.documents.get(ns, {}).items()]
            return _cursor(ns, rows)
        return _cursor(f"{db}.{doc['aggregate']}", [])
