"""datacloud.sharding against a mongos double over the real MongoDB wire protocol (mockupdb)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from datacloud import sharding
from datacloud.sharding import ShardingError
from tests.helpers.mongos_double import MemberDouble, MongosDouble


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[MongosDouble, list[MemberDouble], MongoClient]]:
    """A mongos double and two member doubles, started once per module (stopping takes seconds)."""
    members = [MemberDouble(f"rs{i}") for i in range(2)]
    for m in members:
        m.start()
    mongos = MongosDouble()
    uri = mongos.start()
    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        yield mongos, members, client
    finally:
        client.close()
        mongos.stop()
        for m in members:
            m.stop()


@pytest.fixture
def cluster(servers) -> tuple[MongosDouble, list[MemberDouble], MongoClient]:
    """The doubles reset to a fresh two-shard cluster with healthy members."""
    mongos, members, client = servers
    for m in members:
        m.reset()
    mongos.reset(shards=[{"_id": m.set_name, "host": f"{m.set_name}/{m.address}", "state": 1} for m in members])
    return mongos, members, client


def _direct(host: str) -> MongoClient:
    return MongoClient(host, directConnection=True, serverSelectionTimeoutMS=5000)


def _one_sentence(message: str) -> None:
    assert message.endswith(".")
    assert "\n" not in message
    assert ". " not in message[:-1], message


def test_first_run_sends_exactly_these_changes(cluster):
    mongos, _, client = cluster
    changes = sharding.ensure_sharding(client)
    writes = [(c.db, c.doc) for c in mongos.writes()]
    assert writes == [
        ("admin", {"enableSharding": "datacloud"}),
        ("admin", {"shardCollection": "datacloud.flights", "key": {"_id": "hashed"}}),
        ("admin", {"shardCollection": "datacloud.daily_delay_stats", "key": {"date": 1, "carrier": 1}, "unique": True}),
        ("datacloud", {"createIndexes": "flights", "indexes": [{"key": {"date": 1}, "name": "date_1"}]}),
        ("datacloud", {"createIndexes": "flights", "indexes": [{"key": {"carrier": 1, "date": 1}, "name": "carrier_1_date_1"}]}),
    ]
    # Key order is part of a shard key: it must reach the server as written.
    key = next(c.doc["key"] for c in mongos.writes() if c.doc.get("shardCollection") == "datacloud.daily_delay_stats")
    assert list(key) == ["date", "carrier"]
    assert changes == [
        "enabled sharding on datacloud",
        "sharded datacloud.flights on {_id: 'hashed'}",
        "sharded datacloud.daily_delay_stats on {date: 1, carrier: 1}",
        "created index date_1 on datacloud.flights",
        "created index carrier_1_date_1 on datacloud.flights",
    ]
    # Every change was preceded by a read of the current state.
    names = [c.name for c in mongos.received]
    assert names.index("find") < names.index("enableSharding")


def test_replay_is_a_no_op(cluster):
    mongos, _, client = cluster
    sharding.ensure_sharding(client)
    first = len(mongos.received)
    assert sharding.ensure_sharding(client) == ["unchanged"]
    replay = mongos.received[first:]
    assert replay, "the replay must still look at the cluster"
    assert {c.name for c in replay} <= {"find", "listIndexes"}


def test_already_sharded_with_the_same_key_is_fine(cluster):
    mongos, _, client = cluster
    mongos.shard_collection("datacloud.flights", {"_id": "hashed"})
    changes = sharding.ensure_sharding(client)
    assert "sharded datacloud.flights on {_id: 'hashed'}" not in changes
    assert not [c for c in mongos.writes() if c.doc.get("shardCollection") == "datacloud.flights"]


def test_sharded_with_another_key_says_what_to_do(cluster):
    mongos, _, client = cluster
    mongos.shard_collection("datacloud.flights", {"carrier": 1})
    with pytest.raises(ShardingError) as err:
        sharding.ensure_sharding(client)
    message = str(err.value)
    _one_sentence(message)
    assert "datacloud.flights is already sharded on {carrier: 1}, not {_id: 'hashed'}" in message
    assert "reshardCollection" in message
    assert not [c for c in mongos.writes() if c.doc.get("shardCollection") == "datacloud.flights"]


def test_same_fields_in_another_order_is_another_key(cluster):
    mongos, _, client = cluster
    mongos.shard_collection("datacloud.daily_delay_stats", {"carrier": 1, "date": 1}, unique=True)
    with pytest.raises(ShardingError, match=r"daily_delay_stats is already sharded on \{carrier: 1, date: 1\}"):
        sharding.ensure_sharding(client)


def test_conflicting_index_says_what_to_do(cluster):
    mongos, _, client = cluster
    mongos.indexes["datacloud.flights"] = [
        {"v": 2, "key": {"_id": 1}, "name": "_id_"},
        {"v": 2, "key": {"date": -1}, "name": "date_1"},
    ]
    with pytest.raises(ShardingError) as err:
        sharding.ensure_sharding(client)
    _one_sentence(str(err.value))
    assert "drop that index" in str(err.value)


def test_verify_healthy_cluster(cluster):
    mongos, _, client = cluster
    status = sharding.verify_cluster(client, expected_shards=2, connect_member=_direct)
    assert status.shards == ["rs0", "rs1"]
    assert status.balancer_mode == "full"
    assert status.members["rs1"] == ["rs1-0:27017 PRIMARY", "rs1-1:27017 SECONDARY", "rs1-2:27017 SECONDARY"]
    assert [c.name for c in mongos.received] == ["listShards", "balancerStatus"]
    assert not mongos.writes()


def test_fewer_shards_than_expected(cluster):
    _, _, client = cluster
    with pytest.raises(ShardingError) as err:
        sharding.verify_cluster(client, expected_shards=3, connect_member=_direct)
    _one_sentence(str(err.value))
    assert str(err.value).startswith("mongos lists 2 shard(s) but the inventory expects 3;")


def test_a_member_down(cluster):
    _, members, client = cluster
    members[1].members[2] = {"name": "rs1-2:27017", "health": 0, "stateStr": "(not reachable/healthy)"}
    with pytest.raises(ShardingError) as err:
        sharding.verify_cluster(client, expected_shards=2, connect_member=_direct)
    _one_sentence(str(err.value))
    assert str(err.value).startswith("member rs1-2:27017 of shard rs1 is (not reachable/healthy) (health 0);")


def test_a_recovering_member_is_not_healthy(cluster):
    _, members, client = cluster
    members[0].members[1] = {"name": "rs0-1:27017", "health": 1, "stateStr": "RECOVERING"}
    with pytest.raises(ShardingError, match="member rs0-1:27017 of shard rs0 is RECOVERING"):
        sharding.verify_cluster(client, expected_shards=2, connect_member=_direct)


def test_balancer_off(cluster):
    mongos, _, client = cluster
    mongos.balancer_mode = "off"
    with pytest.raises(ShardingError) as err:
        sharding.verify_cluster(client, expected_shards=2)
    _one_sentence(str(err.value))
    assert "balancer.enabled: true" in str(err.value)


def test_report_per_shard_after_data(cluster):
    mongos, _, client = cluster
    sharding.ensure_sharding(client)
    mongos.documents["datacloud.flights"] = {"rs0": 168_012, "rs1": 168_764}
    report = sharding.shard_report(client)
    assert report == [sharding.ShardLoad("rs0", 2, 168_012), sharding.ShardLoad("rs1", 2, 168_764)]
    match = next(c for c in mongos.received if c.name == "aggregate" and c.db == "config")
    assert match.doc["pipeline"][0]["$match"]["uuid"] == mongos.collections["datacloud.flights"]["uuid"]


def test_report_fails_when_a_shard_holds_no_chunk(cluster):
    mongos, _, client = cluster
    sharding.ensure_sharding(client)
    mongos.chunks["datacloud.flights"] = {"rs0": 4}
    mongos.documents["datacloud.flights"] = {"rs0": 1000}
    with pytest.raises(ShardingError) as err:
        sharding.shard_report(client)
    _one_sentence(str(err.value))
    assert str(err.value).startswith("shard(s) rs1 hold no chunk of datacloud.flights although it has 1000 document(s);")


def test_report_before_sharding(cluster):
    _, _, client = cluster
    with pytest.raises(ShardingError, match=r"^datacloud.flights is not sharded; run the mongo stage"):
        sharding.shard_report(client)
