"""tests/lab/mongo_double.py (the lab's stand-in of mongos and mongod) against a real FerretDB.

The double runs as the lab's pods run it (``python mongo_double.py member|mongos ...``), here on
127.0.0.1: one member that owns the store (FerretDB as its child), one member without a store,
and a mongos in front of the store. pymongo and the repo's real sharding code talk to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bson
import pytest
from bson import Binary, MaxKey, MinKey
from pymongo import MongoClient, monitoring
from pymongo.errors import OperationFailure
from pymongo.write_concern import WriteConcern

from datacloud import sharding
from datacloud.localstack import ferretdb_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
DOUBLE = ROOT / "tests" / "lab" / "mongo_double.py"
DOMAIN = "mongo.svc.cluster.local"
RS0 = [f"datacloud-mongo-rs0-{i}.datacloud-mongo-rs0.{DOMAIN}:27017" for i in range(2)]
RS1 = [f"datacloud-mongo-rs1-0.datacloud-mongo-rs1.{DOMAIN}:27017"]
ADMIN, APP, MONITOR = "clusterAdmin", "datacloud", "clusterMonitor"
PASSWORDS = {ADMIN: "admin-secret-1", APP: "app-secret-1", MONITOR: "monitor-secret-1"}
ROLES = {
    ADMIN: [
        {"name": "clusterManager", "db": "admin"},
        {"name": "clusterMonitor", "db": "admin"},
        {"name": "read", "db": "config"},
        {"name": "dbOwner", "db": "datacloud"},
    ],
    APP: [{"name": "readWrite", "db": "datacloud"}],
    MONITOR: [{"name": "clusterMonitor", "db": "admin"}],
}


@dataclass
class Lab:
    tmp: Path
    users: Path
    store_port: int
    mongos_port: int
    member_ports: dict[str, int]  # in-cluster host:port -> local port
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    def write_users(self) -> None:
        users = [{"name": n, "db": "admin", "password": p, "roles": ROLES[n]} for n, p in self.passwords.items()]
        users.append({"name": "__system", "db": "local", "password": "keyfile-secret", "roles": []})
        tmp = self.users.with_suffix(".new")
        tmp.write_text(json.dumps(users))
        os.replace(tmp, self.users)  # a new file in place, as Kubernetes swaps a mounted Secret

    def log(self, name: str) -> str:
        return self.logs[name].read_text()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def _client(port: int, user: str | None = None, password: str | None = None, **kw) -> MongoClient:
    """As include/datacloud/stages/mongo.py's _client connects (SCRAM-SHA-256, direct)."""
    if user is not None:
        kw.update(username=user, password=password, authSource="admin", authMechanism="SCRAM-SHA-256")
    return MongoClient(host="127.0.0.1", port=port, directConnection=True, serverSelectionTimeoutMS=10_000, **kw)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    binary = ferretdb_binary()
    if not binary.exists():
        pytest.skip(f"FerretDB is not built ({binary} is missing); run ./dev setup")
    tmp = tmp_path_factory.mktemp("mongo-double")
    members = {RS0[0]: free_port(), RS1[0]: free_port()}
    lab = Lab(
        tmp=tmp,
        users=tmp / "users.json",
        store_port=free_port(),
        mongos_port=free_port(),
        member_ports=members,
        logs={n: tmp / f"{n}.log" for n in ("store-member", "member", "mongos")},
    )
    lab.write_users()
    common = [sys.executable, str(DOUBLE)]
    local = ["--bind", "127.0.0.1", "--users", str(lab.users)]
    commands = {
        "store-member": [
            *common,
            "member",
            *local,
            "--port",
            str(members[RS0[0]]),
            "--replset",
            "rs0",
            "--hosts",
            ",".join(RS0),
            "--me",
            RS0[0],
            "--ferretdb",
            str(binary),
            "--data",
            str(tmp / "db"),
            "--store-port",
            str(lab.store_port),
        ],
        "member": [
            *common,
            "member",
            *local,
            "--port",
            str(members[RS1[0]]),
            "--replset",
            "rs1",
            "--hosts",
            ",".join(RS1),
            "--me",
            RS1[0],
        ],
        "mongos": [
            *common,
            "mongos",
            *local,
            "--port",
            str(lab.mongos_port),
            "--upstream",
            f"127.0.0.1:{lab.store_port}",
            "--shards",
            f"rs0/{','.join(RS0)};rs1/{','.join(RS1)}",
            "--balancer",
            "on",
        ],
    }
    try:
        for name, cmd in commands.items():
            with lab.logs[name].open("w") as out:
                lab.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for port in (*members.values(), lab.mongos_port, lab.store_port):
            _wait(f"port {port} open", lambda p=port: _port_open(p))
        yield lab
    finally:
        for proc in lab.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in lab.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def store(lab: Lab) -> Iterator[MongoClient]:
    """FerretDB itself (no auth), to see what really got stored."""
    with _client(lab.store_port) as client:
        yield client


def test_app_user_round_trips_through_mongos_to_ferretdb(lab: Lab, store: MongoClient) -> None:
    # default mechanism negotiation: saslSupportedMechs in the handshake
    with MongoClient(
        "127.0.0.1",
        lab.mongos_port,
        username=APP,
        password=lab.passwords[APP],
        authSource="admin",
        serverSelectionTimeoutMS=10_000,
    ) as client:
        assert client.admin.command("hello")["msg"] == "isdbgrid"
        flights = client.datacloud.flights
        docs = [
            {"_id": f"f{i}", "date": f"2013-01-0{i % 3 + 1}", "carrier": "AA" if i % 2 else "UA", "delay": i} for i in range(10)
        ]
        assert len(flights.insert_many(docs).inserted_ids) == 10
        assert sorted(d["_id"] for d in flights.find({"carrier": "AA"})) == ["f1", "f3", "f5", "f7", "f9"]
        assert flights.update_many({"carrier": "UA"}, {"$inc": {"delay": 100}}).modified_count == 5
        grouped = list(flights.aggregate([{"$group": {"_id": "$carrier", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]))
        assert grouped == [{"_id": "AA", "n": 5}, {"_id": "UA", "n": 5}]
        assert flights.count_documents({"date": "2013-01-01"}) == 4
        # an unacknowledged write is an OP_MSG with moreToCome: no reply, the connection stays in step
        flights.with_options(write_concern=WriteConcern(w=0)).insert_one({"_id": "unacked", "carrier": "ZZ"})
        _wait("the unacknowledged insert", lambda: flights.find_one({"_id": "unacked"}) is not None, 5)
        assert flights.delete_one({"_id": "unacked"}).deleted_count == 1
    stored = store.datacloud.flights
    assert stored.count_documents({}) == 10
    assert stored.find_one({"_id": "f0"})["delay"] == 100
    assert "conn " in lab.log("mongos") and lab.passwords[APP] not in lab.log("mongos")


def test_authentication_and_authorization_are_enforced(lab: Lab) -> None:
    with _client(lab.mongos_port, APP, "wrong-password") as client:
        with pytest.raises(OperationFailure) as failed:
            client.admin.command("ping")
        assert failed.value.code == 18
    with _client(lab.mongos_port) as anonymous:
        assert anonymous.admin.command("ping")["ok"] == 1
        with pytest.raises(OperationFailure) as failed:
            anonymous.datacloud.flights.find_one()
        assert failed.value.code == 13 and "requires authentication" in str(failed.value)
    with _client(lab.mongos_port, APP, lab.passwords[APP]) as app:
        with pytest.raises(OperationFailure) as failed:
            app.admin.command("enableSharding", "datacloud")
        assert failed.value.code == 13 and "not authorized on admin" in str(failed.value)
        with pytest.raises(OperationFailure) as failed:
            app.other.things.insert_one({"x": 1})
        assert failed.value.code == 13 and "not authorized on other to execute command { insert" in str(failed.value)
        with pytest.raises(OperationFailure) as failed:
            app.config.chunks.find_one()
        assert failed.value.code == 13
    # the member without a store answers what a member answers and refuses data commands
    with _client(lab.member_ports[RS1[0]], MONITOR, lab.passwords[MONITOR]) as member:
        hello = member.admin.command("hello")
        assert hello["setName"] == "rs1" and hello["isWritablePrimary"] and hello["hosts"] == RS1
        with pytest.raises(OperationFailure) as failed:
            member.config.databases.find_one()
        assert failed.value.code == 20 and "stores no data" in str(failed.value)


def test_scram_conversation_with_the_empty_exchange(lab: Lab) -> None:
    """SCRAM-SHA-256 by hand, without skipEmptyExchange (a third, empty round), on one connection."""
    password = lab.passwords[APP].encode()
    with _client(lab.mongos_port, maxPoolSize=1) as client:
        with pytest.raises(OperationFailure) as failed:
            client.admin.command("saslStart", mechanism="SCRAM-SHA-1", payload=Binary(b"n,,n=datacloud,r=abc"))
        assert failed.value.code == 334 and "SCRAM-SHA-256" in str(failed.value)
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = f"n={APP},r={nonce}"
        first = client.admin.command("saslStart", mechanism="SCRAM-SHA-256", payload=Binary(f"n,,{bare}".encode()))
        assert first["done"] is False
        server_first = bytes(first["payload"]).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        assert fields["r"].startswith(nonce)
        salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
        second = client.admin.command(
            "saslContinue", conversationId=first["conversationId"], payload=Binary(f"{without_proof},p={proof}".encode())
        )
        server_signature = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth_message, "sha256")
        assert second["done"] is False and bytes(second["payload"]).decode() == f"v={base64.b64encode(server_signature).decode()}"
        third = client.admin.command("saslContinue", conversationId=first["conversationId"], payload=Binary(b""))
        assert third["done"] is True
        assert client.datacloud.flights.count_documents({}) == 10  # this connection is now the app user's
        status = client.admin.command("connectionStatus")["authInfo"]
        assert status["authenticatedUsers"] == [{"user": APP, "db": "admin"}]


def test_the_repos_sharding_code_converges_and_reports(lab: Lab, store: MongoClient) -> None:
    def connect_member(hostport: str) -> MongoClient:
        return _client(lab.member_ports[hostport], MONITOR, lab.passwords[MONITOR])

    with _client(lab.mongos_port, ADMIN, lab.passwords[ADMIN]) as admin:
        status = sharding.verify_cluster(admin, 2, connect_member)
        assert status.shards == ["rs0", "rs1"] and status.balancer_mode == "full"
        assert status.members == {"rs0": [f"{RS0[0]} PRIMARY", f"{RS0[1]} SECONDARY"], "rs1": [f"{RS1[0]} PRIMARY"]}

        changes = sharding.ensure_sharding(admin)
        assert changes[:3] == [
            "enabled sharding on datacloud",
            "sharded datacloud.flights on {_id: 'hashed'}",
            "sharded datacloud.daily_delay_stats on {date: 1, carrier: 1}",
        ]
        assert sharding.ensure_sharding(admin) == ["unchanged"]
        with pytest.raises(OperationFailure) as failed:
            admin.admin.command({"shardCollection": "datacloud.flights", "key": {"carrier": 1}})
        assert failed.value.code == 23

        meta = admin.config.collections.find_one({"_id": "datacloud.flights"})
        chunks = list(admin.config.chunks.find({"uuid": meta["uuid"]}))
        assert sorted(c["shard"] for c in chunks) == ["rs0", "rs0", "rs1", "rs1"]
        assert {"_id": MinKey()} in [c["min"] for c in chunks] and {"_id": MaxKey()} in [c["max"] for c in chunks]
        # MinKey in a request on config reaches the store as its marker and matches
        assert admin.config.chunks.find_one({"uuid": meta["uuid"], "min": {"_id": MinKey()}})["shard"] == "rs0"
        daily = admin.config.chunks.find_one(
            {"uuid": admin.config.collections.find_one({"_id": "datacloud.daily_delay_stats"})["uuid"]}
        )
        assert daily["shard"] == "rs0" and daily["min"] == {"date": MinKey(), "carrier": MinKey()}
        indexes = {ix["name"]: ix for ix in store.datacloud.daily_delay_stats.list_indexes()}
        assert indexes["date_1_carrier_1"].get("unique") is True

        admin.datacloud.flights.insert_many([{"_id": f"g{i}", "date": "2013-01-04", "carrier": "DL"} for i in range(7)])
        report = sharding.shard_report(admin)
    real = store.datacloud.flights.count_documents({})
    assert real == 17
    assert [(r.shard, r.chunks, r.documents) for r in report] == [("rs0", 2, real), ("rs1", 2, 0)]


def test_rotated_password_takes_effect_without_restart(lab: Lab) -> None:
    old = lab.passwords[APP]
    lab.passwords[APP] = "app-secret-2"
    lab.write_users()
    with _client(lab.mongos_port, APP, old) as client:
        with pytest.raises(OperationFailure) as failed:
            client.datacloud.flights.find_one()
        assert failed.value.code == 18
    with _client(lab.mongos_port, APP, lab.passwords[APP]) as client:
        assert client.datacloud.flights.find_one({"_id": "f1"})["carrier"] == "AA"
    assert all(proc.poll() is None for proc in lab.procs.values())


def _op_query(port: int, collection: str, query: dict) -> tuple[int, int, dict]:
    payload = struct.pack("<i", 0) + collection.encode() + b"\x00" + struct.pack("<ii", 0, -1) + bson.encode(query)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("<iiii", 16 + len(payload), 4242, 0, 2004) + payload)
        header = s.recv(16, socket.MSG_WAITALL)
        length, _, response_to, opcode = struct.unpack("<iiii", header)
        body = s.recv(length - 16, socket.MSG_WAITALL)
    assert response_to == 4242
    return opcode, struct.unpack_from("<i", body, 16)[0], bson.decode(body[20:])


class _Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_legacy_handshake_and_a_spark_style_session(lab: Lab) -> None:
    opcode, returned, hello = _op_query(lab.mongos_port, "admin.$cmd", {"isMaster": 1, "helloOk": True})
    assert opcode == 1 and returned == 1
    assert hello["ismaster"] is True and hello["msg"] == "isdbgrid" and hello["maxWireVersion"] == 21 and hello["helloOk"]
    assert "compression" not in hello
    opcode, _, refused = _op_query(lab.mongos_port, "datacloud.$cmd", {"find": "flights"})
    assert opcode == 1 and refused["code"] == 352
    _, _, member_hello = _op_query(lab.member_ports[RS0[0]], "admin.$cmd", {"ismaster": 1})
    assert member_hello["setName"] == "rs0" and member_hello["primary"] == RS0[0] and member_hello["me"] == RS0[0]

    listener = _Commands()
    with _client(lab.mongos_port, APP, lab.passwords[APP], event_listeners=[listener]) as client:
        db = client.datacloud
        db.batches.insert_many([{"_id": i} for i in range(5)])
        assert {"flights", "batches"} <= set(db.list_collection_names())
        assert "_id_" in [ix["name"] for ix in db.flights.list_indexes()]
        assert [d["_id"] for d in db.batches.find().sort("_id", 1).batch_size(2)] == [0, 1, 2, 3, 4]
    assert listener.names.count("getMore") >= 2


def test_the_store_member_restarts_ferretdb_and_stops_it_on_sigterm(lab: Lab) -> None:
    def ferretdb_pids() -> list[int]:
        return [int(p) for p in re.findall(r"FerretDB started \(pid (\d+)\)", lab.log("store-member"))]

    first = ferretdb_pids()[-1]
    os.kill(first, signal.SIGKILL)  # the child the store member started
    _wait("FerretDB restarted", lambda: len(ferretdb_pids()) >= 2 and _port_open(lab.store_port), 30)
    with _client(lab.mongos_port, APP, lab.passwords[APP]) as client:
        assert client.datacloud.flights.count_documents({}) == 17  # the data survived (SQLite files)
    member = lab.procs["store-member"]
    member.terminate()
    assert member.wait(15) == 0
    _wait("FerretDB stopped", lambda: not _port_open(lab.store_port), 10)
    second = ferretdb_pids()[-1]
    assert not Path(f"/proc/{second}").exists() or "zombie" in Path(f"/proc/{second}/status").read_text()
