"""platform_state: recording stages and addresses, idempotence, concurrent writers, bad input."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime

import pytest

from datacloud import platform_state as ps
from datacloud.errors import UserError

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def state_file(tmp_path, monkeypatch):
    path = tmp_path / "platform" / "state.json"
    monkeypatch.setenv("DATACLOUD_PLATFORM_STATE", str(path))
    return path


def test_empty_until_a_stage_records(state_file):
    state = ps.load_state()
    assert not state.any_provisioned
    assert state.links() == []
    assert state.service_url("grafana") is None


def test_record_then_links_in_menu_order(state_file):
    assert ps.record_stage("spark", run_id="r1", services={"spark_history": "http://192.168.1.1:31080/"}, now=T0)
    assert ps.record_stage("monitoring", services={"grafana": "http://192.168.1.1:30300", "headlamp": "https://h.lan"})
    state = ps.load_state()
    assert state.provisioned("spark")
    assert not state.provisioned("jupyter")
    assert [(s.key, url) for s, url in state.links()] == [
        ("grafana", "http://192.168.1.1:30300"),
        ("spark_history", "http://192.168.1.1:31080"),  # trailing slash dropped
        ("headlamp", "https://h.lan"),
    ]
    assert state.stage("spark") == {"recorded_at": "2026-01-02T03:04:05+00:00", "run_id": "r1", "facts": {}}


def test_second_record_is_unchanged(state_file, caplog):
    caplog.set_level("INFO")
    assert ps.record_stage("mongo", facts={"shards": 2, "mongos": 2}, now=T0)
    before = state_file.read_text()
    assert ps.record_stage("mongo", facts={"shards": 2, "mongos": 2}) is False
    assert state_file.read_text() == before
    assert "Platform state | mongo unchanged" in caplog.text
    assert ps.load_state().facts("mongo") == {"shards": 2, "mongos": 2}


def test_rerecord_replaces_services_of_that_stage_only(state_file):
    ps.record_stage("monitoring", services={"grafana": "http://a:1", "prometheus": "http://a:2"})
    ps.record_stage("jupyter", services={"jupyterhub": "http://a:3"})
    assert ps.record_stage("monitoring", services={"grafana": "http://b:1"})
    state = ps.load_state()
    assert state.service_url("grafana") == "http://b:1"
    assert state.service_url("prometheus") is None
    assert state.service_url("jupyterhub") == "http://a:3"


def test_service_hidden_when_its_stage_is_forgotten(state_file):
    ps.record_stage("jupyter", services={"jupyterhub": "http://a:3"})
    ps.record_stage("spark", services={"spark_history": "http://a:4"})
    assert ps.forget(["jupyter", "storage"]) == ["jupyter"]
    state = ps.load_state()
    assert state.service_url("jupyterhub") is None
    assert state.service_url("spark_history") == "http://a:4"
    assert ps.forget() == ["spark"]
    assert not ps.load_state().any_provisioned


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage": "nosuch"}, "unknown stage 'nosuch'; stages are preflight, gateway,"),
        ({"stage": "spark", "services": {"grafana": "http://a"}}, "service grafana is installed by stage monitoring, not spark."),
        ({"stage": "spark", "services": {"kibana": "http://a"}}, "unknown service 'kibana'; services are grafana,"),
        ({"stage": "spark", "services": {"spark_history": "javascript:alert(1)"}},
         "the address recorded for spark_history must be an http(s) URL with a host, not 'javascript:alert(1)'."),
        ({"stage": "mongo", "facts": {"Bad Key": 1}}, "fact name 'Bad Key' must be lowercase letters, digits and '_'."),
    ],
)
def test_bad_input_is_one_sentence(state_file, kwargs, message):
    stage = kwargs.pop("stage")
    with pytest.raises(UserError) as exc:
        ps.record_stage(stage, **kwargs)
    assert str(exc.value).startswith(message)
    assert not state_file.exists()


def test_damaged_file_reads_as_empty_and_is_rewritten(state_file, caplog):
    state_file.parent.mkdir(parents=True)
    state_file.write_text("{not json")
    assert not ps.load_state().any_provisioned
    assert "is unreadable" in caplog.text
    state_file.write_text(json.dumps({"version": 99}))
    assert not ps.load_state().any_provisioned
    ps.record_stage("kubernetes", facts={"nodes": 5})
    assert json.loads(state_file.read_text())["stages"]["kubernetes"]["facts"] == {"nodes": 5}


def _record_many(args):
    path, worker = args
    import os

    os.environ["DATACLOUD_PLATFORM_STATE"] = path
    for i in range(15):
        ps.record_stage("node_prep", facts={f"w{worker}_{i}": i, **{f"w{worker}_{j}": j for j in range(i)}})
        ps.record_stage("preflight", facts={"last": worker * 100 + i})


def test_concurrent_writers_never_corrupt(state_file):
    """Writers in separate processes (mapped tasks) serialise on the lock; the file is always valid JSON."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_record_many, [(str(state_file), w) for w in range(4)])
    data = json.loads(state_file.read_text())
    assert set(data["stages"]) == {"node_prep", "preflight"}
    assert len(data["stages"]["node_prep"]["facts"]) == 15  # the last writer's 15 keys, complete
    assert not list(state_file.parent.glob(".state-*"))  # no temp files left behind
