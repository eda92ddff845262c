"""The mongo stage's sharding step end to end over real protocols: pymongo -> our SSH
forward -> an SSH server double (paramiko) -> mongos and member doubles (mockupdb)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from datacloud.forward import ssh_forward
from datacloud.sharding import ShardingError
from datacloud.stages import mongo
from tests.helpers import datalayer_inventories as inventories
from tests.helpers.kube_double import KubeDoubleState, StageContextDouble
from tests.helpers.mongos_double import MemberDouble, MongosDouble, ScramServer
from tests.helpers.ssh_forward_double import SshForwardDouble

MONGOS_IP = "10.96.0.27"
POD_IPS = {"rs0": "10.244.1.10", "rs1": "10.244.2.10"}


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[MongosDouble, list[MemberDouble], SshForwardDouble]]:
    """Doubles standing for the cluster network behind the control plane's sshd."""
    members = [MemberDouble(f"rs{i}") for i in range(2)]
    for m in members:
        m.start()
    mongos = MongosDouble()
    mongos_port = _port(mongos.start().removeprefix("mongodb://"))
    routes = {(MONGOS_IP, 27017): ("127.0.0.1", mongos_port)}
    routes.update({(POD_IPS[m.set_name], 27017): ("127.0.0.1", _port(m.address)) for m in members})
    ssh = SshForwardDouble(routes)
    ssh.start()
    try:
        yield mongos, members, ssh
    finally:
        ssh.stop()
        mongos.stop()
        for m in members:
            m.stop()


@pytest.fixture
def ctx(network) -> StageContextDouble:
    mongos, members, ssh = network
    for m in members:
        m.reset()
    # listShards names members by their in-cluster DNS names, which only resolve inside the cluster.
    mongos.reset(
        shards=[
            {
                "_id": m.set_name,
                "host": f"{m.set_name}/datacloud-mongo-{m.set_name}-0.datacloud-mongo-{m.set_name}.mongo.svc.cluster.local:27017",
            }
            for m in members
        ]
    )
    ssh.requested.clear()
    context = StageContextDouble(inventories.reference(), KubeDoubleState(), transport=ssh.client_transport)
    mongo.step_apply(context)  # creates the Secrets the step reads
    state = context.state
    secret = {k.split("/")[-1]: v["stringData"] for k, v in state.objects.items() if k.startswith("Secret/")}
    # The doubles accept exactly the users the stage generated: mongos our admin user,
    # the shard members the operator's cluster-monitor user.
    mongos.scram = ScramServer({mongo.ADMIN_USER: secret["datacloud-mongo-admin"]["password"]})
    users = secret[mongo.USERS_SECRET]
    for m in members:
        m.scram = ScramServer({users["MONGODB_CLUSTER_MONITOR_USER"]: users["MONGODB_CLUSTER_MONITOR_PASSWORD"]})
    state.status[("service", "datacloud-mongo-mongos")] = [{"spec": {"clusterIP": MONGOS_IP}}]
    for m in members:
        state.status[("pod", f"datacloud-mongo-{m.set_name}-0")] = [{"status": {"podIP": POD_IPS[m.set_name]}}]
    return context


def test_forward_carries_the_wire_protocol(network):
    mongos, _, ssh = network
    mongos.reset(shards=[{"_id": "rs0", "host": "rs0/a:27017"}])
    with ssh_forward(ssh.client_transport, MONGOS_IP, 27017) as (host, port):
        assert host == "127.0.0.1"
        with MongoClient(host=host, port=port, directConnection=True, serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("listShards")["shards"] == [{"_id": "rs0", "host": "rs0/a:27017"}]
    assert ssh.requested[-1] == (MONGOS_IP, 27017)


def test_sharding_step_first_run_then_unchanged(ctx, network):
    mongos, _, ssh = network
    first = mongo.step_sharding(ctx)
    assert first["shards"] == ["rs0", "rs1"]
    assert "sharded datacloud.flights on {_id: 'hashed'}" in first["changes"]
    assert first["flights"] == [{"shard": "rs0", "chunks": 2, "documents": 0}, {"shard": "rs1", "chunks": 2, "documents": 0}]
    # mongos through its Service IP, each shard member through its pod IP.
    assert set(ssh.requested) == {(MONGOS_IP, 27017), (POD_IPS["rs0"], 27017), (POD_IPS["rs1"], 27017)}
    assert mongos.scram.authenticated == [mongo.ADMIN_USER]
    assert [m.scram.authenticated for m in network[1]] == [["clusterMonitor"], ["clusterMonitor"]]
    writes = len(mongos.writes())
    second = mongo.step_sharding(ctx)
    assert second["changes"] == []
    assert len(mongos.writes()) == writes


def test_sharding_step_reports_a_member_down(ctx, network):
    _, members, _ = network
    members[0].members[0] = {"name": "datacloud-mongo-rs0-0:27017", "health": 0, "stateStr": "(not reachable/healthy)"}
    with pytest.raises(ShardingError, match="member datacloud-mongo-rs0-0:27017 of shard rs0"):
        mongo.step_sharding(ctx)


def test_wrong_password_is_refused(ctx, network):
    mongos, _, _ = network
    mongos.scram.users[mongo.ADMIN_USER] = "not-the-generated-one"
    with pytest.raises(OperationFailure, match="Authentication failed"):
        mongo.step_sharding(ctx)
    assert not mongos.writes()


def test_sharding_step_before_apply_finished_is_transient(network):
    context = StageContextDouble(inventories.reference(), KubeDoubleState(), transport=network[2].client_transport)
    with pytest.raises(mongo.TransientError, match="apply step has not finished"):
        mongo.step_sharding(context)
