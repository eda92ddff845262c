"""Make the sharded data layer ready, and check it, with pymongo through mongos.

* :func:`verify_cluster` — ``listShards`` has the expected number of shards,
  every member of every shard replica set is healthy, the balancer is on.
* :func:`ensure_sharding` — the ``datacloud`` database is sharding-enabled,
  ``flights`` is sharded on a hashed key, ``daily_delay_stats`` on
  ``{date: 1, carrier: 1}``, and the indexes the pipeline needs exist.
  Idempotent: it reads first and changes only what is missing; a replay sends
  no command that changes anything and reports "unchanged". A collection
  already sharded on another key is a :class:`ShardingError` saying what to do.
* :func:`shard_report` — after data exists, chunks and documents of ``flights``
  per shard; every shard must hold chunks.

Every problem is one sentence (:class:`ShardingError`, a UserError, so tasks
fail fast); connection failures stay pymongo errors and are retried by Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient

from datacloud.config import MONGO_DATABASE
from datacloud.errors import UserError

log = logging.getLogger(__name__)


class ShardingError(UserError):
    """The sharded cluster is not in the state the platform needs; the message says what to do."""


@dataclass(frozen=True)
class ShardedCollection:
    name: str
    key: dict[str, Any]
    unique: bool = False


@dataclass(frozen=True)
class Index:
    collection: str
    keys: tuple[tuple[str, Any], ...]
    unique: bool = False

    @property
    def name(self) -> str:
        return "_".join(f"{k}_{v}" for k, v in self.keys)


# What the pipelines write (the flights pipeline's documents carry `date`, an
# ISO day string, and `carrier`): flights spread evenly by a hashed _id; the
# daily statistics ranged by day then carrier, one document per (date, carrier).
SHARDED: tuple[ShardedCollection, ...] = (
    ShardedCollection("flights", {"_id": "hashed"}),
    ShardedCollection("daily_delay_stats", {"date": 1, "carrier": 1}, unique=True),
)
INDEXES: tuple[Index, ...] = (
    Index("flights", (("date", 1),)),  # idempotent ingest replaces one day at a time
    Index("flights", (("carrier", 1), ("date", 1))),  # per-carrier delay queries
)

HEALTHY_STATES = {"PRIMARY", "SECONDARY"}


@dataclass
class ClusterStatus:
    shards: list[str]
    balancer_mode: str
    members: dict[str, list[str]] = field(default_factory=dict)  # shard -> "host STATE"


@dataclass(frozen=True)
class ShardLoad:
    shard: str
    chunks: int
    documents: int


def _key(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A key document in comparable form (1 and 1.0 are the same direction)."""
    return {k: (int(v) if isinstance(v, int | float) and not isinstance(v, bool) else v) for k, v in doc.items()}


def _fmt(key: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in key.items()) + "}"


def _replset_hosts(host: str) -> tuple[str, list[str]]:
    """'rs0/a:27017,b:27017' -> ('rs0', ['a:27017', 'b:27017'])."""
    name, _, hosts = host.partition("/")
    return name, [h for h in hosts.split(",") if h]


def verify_cluster(
    client: MongoClient,
    expected_shards: int,
    connect_member: Callable[[str], MongoClient] | None = None,
) -> ClusterStatus:
    """Check shards, members and balancer; raise ShardingError naming the first problem.

    ``connect_member(host)`` opens a direct connection to one replica-set member
    (for ``replSetGetStatus``, which mongos does not answer); without it the
    member check is skipped and logged.
    """
    shards = client.admin.command("listShards")["shards"]
    names = [s["_id"] for s in shards]
    log.info("Mongo | listShards: %d shard(s): %s", len(shards), ", ".join(names) or "none")
    if len(shards) < expected_shards:
        raise ShardingError(
            f"mongos lists {len(shards)} shard(s) but the inventory expects {expected_shards}; wait until the operator "
            "has added every shard (kubectl -n mongo get psmdb shows ready) or lower components.mongo.shards."
        )
    status = ClusterStatus(shards=names, balancer_mode="")
    for shard in shards:
        if shard.get("draining"):
            raise ShardingError(
                f"shard {shard['_id']} is draining (being removed); let the removal finish or cancel it before re-running."
            )
        rs_name, hosts = _replset_hosts(shard["host"])
        if connect_member is None:
            log.info("Mongo | members of %s not checked (no direct member connection)", shard["_id"])
            continue
        status.members[shard["_id"]] = _check_members(shard["_id"], rs_name, hosts, connect_member)
    balancer = client.admin.command("balancerStatus")
    status.balancer_mode = str(balancer.get("mode", ""))
    log.info("Mongo | balancer mode %s", status.balancer_mode)
    if status.balancer_mode != "full":
        raise ShardingError(
            f"the balancer is {status.balancer_mode or 'in an unknown mode'}, not on; set spec.sharding.balancer.enabled: true "
            "in the PerconaServerMongoDB object (manifests/mongo/cluster.yaml) and re-run the stage."
        )
    return status


def _check_members(shard: str, rs_name: str, hosts: list[str], connect_member: Callable[[str], MongoClient]) -> list[str]:
    if not hosts:
        raise ShardingError(
            f"shard {shard} has no member hosts in listShards; "
            "check the operator log (kubectl -n mongo logs deploy/psmdb-operator)."
        )
    member_client = connect_member(hosts[0])
    try:
        rs = member_client.admin.command("replSetGetStatus")
    finally:
        member_client.close()
    if rs.get("set") != rs_name:
        raise ShardingError(
            f"{hosts[0]} belongs to replica set {rs.get('set')!r}, not {rs_name!r} as listShards says; check the shard's pods."
        )
    seen = []
    for member in rs.get("members", []):
        state = member.get("stateStr", "?")
        seen.append(f"{member.get('name')} {state}")
        if member.get("health") != 1 or state not in HEALTHY_STATES:
            raise ShardingError(
                f"member {member.get('name')} of shard {shard} is {state} (health {member.get('health')}); "
                f"wait for it to recover or check its pod (kubectl -n mongo describe pod) before re-running."
            )
    log.info("Mongo | shard %s: %s", shard, ", ".join(seen))
    return seen


def _sharding_enabled(client: MongoClient, database: str) -> bool:
    return client["config"]["databases"].find_one({"_id": database}) is not None


def _sharded_key(client: MongoClient, namespace: str) -> dict[str, Any] | None:
    doc = client["config"]["collections"].find_one({"_id": namespace})
    if doc is None or doc.get("dropped"):
        return None
    return dict(doc["key"])


def ensure_sharding(client: MongoClient, database: str = MONGO_DATABASE) -> list[str]:
    """Converge sharding and indexes; returns what changed, or ["unchanged"]."""
    changes: list[str] = []
    if _sharding_enabled(client, database):
        log.info("Mongo | database %s: sharding already enabled (unchanged)", database)
    else:
        client.admin.command("enableSharding", database)
        changes.append(f"enabled sharding on {database}")
        log.info("Mongo | database %s: sharding enabled", database)

    for spec in SHARDED:
        ns = f"{database}.{spec.name}"
        current = _sharded_key(client, ns)
        if current is None:
            cmd: dict[str, Any] = {"shardCollection": ns, "key": spec.key}
            if spec.unique:
                cmd["unique"] = True
            client.admin.command(cmd)
            changes.append(f"sharded {ns} on {_fmt(spec.key)}")
            log.info("Mongo | %s sharded on %s", ns, _fmt(spec.key))
        elif _key(current) == _key(spec.key) and list(current) == list(spec.key):
            log.info("Mongo | %s already sharded on %s (unchanged)", ns, _fmt(spec.key))
        else:
            raise ShardingError(
                f"{ns} is already sharded on {_fmt(current)}, not {_fmt(spec.key)}; reshard it "
                f"(db.adminCommand({{reshardCollection: '{ns}', key: {_fmt(spec.key)}}})) "
                "or drop the collection, then re-run the stage."
            )

    for index in INDEXES:
        coll = client[database][index.collection]
        existing = {ix["name"]: ix for ix in coll.list_indexes()}
        wanted = dict(index.keys)
        found = existing.get(index.name)
        if found is None:
            options: dict[str, Any] = {"unique": True} if index.unique else {}
            coll.create_index(list(index.keys), name=index.name, **options)
            changes.append(f"created index {index.name} on {database}.{index.collection}")
            log.info("Mongo | index %s on %s.%s created", index.name, database, index.collection)
        elif (
            _key(found["key"]) != _key(wanted) or list(found["key"]) != list(wanted) or bool(found.get("unique")) != index.unique
        ):
            raise ShardingError(
                f"index {index.name} on {database}.{index.collection} exists with keys {_fmt(found['key'])}"
                f"{' (unique)' if found.get('unique') else ''}, not {_fmt(wanted)}; drop that index and re-run the stage."
            )
        else:
            log.info("Mongo | index %s on %s.%s present (unchanged)", index.name, database, index.collection)
    return changes or ["unchanged"]


def shard_report(client: MongoClient, database: str = MONGO_DATABASE, collection: str = "flights") -> list[ShardLoad]:
    """Chunks and documents of one sharded collection per shard; every shard must hold chunks."""
    ns = f"{database}.{collection}"
    shards = [s["_id"] for s in client.admin.command("listShards")["shards"]]
    meta = client["config"]["collections"].find_one({"_id": ns})
    if meta is None or meta.get("dropped"):
        raise ShardingError(f"{ns} is not sharded; run the mongo stage (it shards it) before the report.")
    chunks = {
        d["_id"]: int(d["n"])
        for d in client["config"]["chunks"].aggregate(
            [{"$match": {"uuid": meta["uuid"]}}, {"$group": {"_id": "$shard", "n": {"$sum": 1}}}]
        )
    }
    documents: dict[str, int] = {}
    for d in client[database][collection].aggregate([{"$collStats": {"count": {}}}]):
        documents[d["shard"]] = documents.get(d["shard"], 0) + int(d.get("count", 0))
    report = [ShardLoad(s, chunks.get(s, 0), documents.get(s, 0)) for s in shards]
    for load in report:
        log.info("Mongo | %s on %s: %d chunk(s), %d document(s)", ns, load.shard, load.chunks, load.documents)
    total = sum(load.documents for load in report)
    empty = [load.shard for load in report if load.chunks == 0]
    if total and empty:
        raise ShardingError(
            f"shard(s) {', '.join(empty)} hold no chunk of {ns} although it has {total} document(s); check that the balancer "
            "is on (sh.getBalancerState()) and wait for a balancing round."
        )
    return report
