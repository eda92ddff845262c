"""The connect target against a real Spark Connect server (the local stack's) and a real FerretDB.

* the transform task is a thin client: no JVM descends from the task process, and
  the documents it writes equal those of the local target (a JVM in the task);
* two days at once, each in a session of its own (a temp view of one is not seen by
  the other), write what they write one after the other;
* a Connect server killed mid-job: the task fails with one sentence as a
  TransientError (Airflow retries it), and the retry on the restarted server succeeds;
* no server at all: the same sentence, within the client's bounded retries.

Each task runs in a child process (``TASK``), as Airflow's worker runs it: the
operator's ``execute()`` with a one-day data interval.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import date
from pathlib import Path

import psutil
import pymongo
import pytest

from datacloud.config import REPO_ROOT
from datacloud.localstack import Stack
from datacloud.pipelines import flights
from datacloud.pipelines.ingest import connect

DAY1 = date(2013, 1, 1)  # 842 departures
DAY2 = date(2013, 1, 2)  # 943 departures
STATS = (flights.DELAY_STATS, flights.ORIGIN_WEATHER)

# One transform task as the worker runs it; prints RESULT or FAILED and, at the end, what of a JVM it has.
TASK = r"""
import json, logging, sys, time
from datetime import datetime, timedelta
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from datacloud import spark
op = spark.transform_operator(task_id="transform")
start = datetime.fromisoformat(sys.argv[1])
t = time.monotonic()
try:
    result = op.execute({"data_interval_start": start, "data_interval_end": start + timedelta(days=1)})
    result["execute_s"] = round(time.monotonic() - t, 2)
except Exception as exc:
    print("FAILED " + json.dumps({"type": type(exc).__name__, "message": str(exc)}), flush=True)
    sys.exit(1)
from pyspark import SparkContext
print("RESULT " + json.dumps({"result": result, "operator": type(op).__name__,
                              "spark_context": SparkContext._active_spark_context is not None}), flush=True)
"""

# Two days at once in one process (two threads, as two tasks would be two processes), and two
# sessions side by side: a temp view made in one must not be visible in the other.
TWO_DAYS = r"""
import json, sys, threading
from pathlib import Path
from datacloud import spark
url, uri, database, landing = sys.argv[1:5]
results, errors = {}, []
def one(day):
    try:
        results[day] = spark.run_connect(day, Path(landing), uri, database, url)
    except Exception as exc:
        errors.append(f"{day}: {type(exc).__name__}: {exc}")
threads = [threading.Thread(target=one, args=(d,)) for d in ("2013-01-01", "2013-01-02")]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=600)
with spark._connect_mode():
    a, b = spark.connect_session(url), spark.connect_session(url)
    a.range(3).createOrReplaceTempView("only_in_a")
    seen = {"a": a.catalog.tableExists("only_in_a"), "b": b.catalog.tableExists("only_in_a"),
            "sessions": len({a.session_id, b.session_id})}
    a.stop(); b.stop()
print("RESULT " + json.dumps({"results": results, "errors": errors, "views": seen}), flush=True)
"""


@pytest.fixture(scope="module")
def connect_stack(ferretdb: Stack) -> Stack:
    """The session's FerretDB stack with its Spark Connect server, for this module (stopped after it)."""
    ferretdb.start_spark_connect()
    yield ferretdb
    ferretdb.stop("spark-connect")


@pytest.fixture(scope="module")
def landed(tmp_path_factory) -> Path:
    """2013-01-01 and 2013-01-02 landed once; returns the data folder."""
    data = tmp_path_factory.mktemp("connect-data")
    old = os.environ.get("DATACLOUD_DATA_DIR")
    os.environ["DATACLOUD_DATA_DIR"] = str(data)
    try:
        flights.land(DAY1)
        flights.land(DAY2)
    finally:
        if old is None:
            os.environ.pop("DATACLOUD_DATA_DIR", None)
        else:
            os.environ["DATACLOUD_DATA_DIR"] = old
    return data


def _database(stack: Stack, data: Path, days=(DAY1,)) -> str:
    """A database of its own with DAYS ingested from the landing zone under DATA; returns its URI."""
    uri = f"mongodb://127.0.0.1:{stack.mongo_port}/connect_it_{uuid.uuid4().hex[:10]}"
    mongo = connect(uri)
    try:
        for day in days:
            flights.ingest(day, "it", mongo, root=data / "landing")
    finally:
        mongo.close()
    return uri


def _task_env(stack: Stack, data: Path, uri: str, target: str) -> dict[str, str]:
    database = uri.rsplit("/", 1)[1]
    env = {**os.environ, **stack.env()}
    env.update(
        DATACLOUD_DATA_DIR=str(data),
        DATACLOUD_MONGO_URI=uri,
        AIRFLOW_CONN_DATACLOUD_MONGO=json.dumps(
            {"conn_type": "mongo", "host": "127.0.0.1", "port": stack.mongo_port, "schema": database}
        ),
        DATACLOUD_SPARK_TARGET=target,
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    return env


def _run_task(env: dict[str, str], day: date, on_line=None, timeout: float = 600) -> dict:
    """Run TASK for DAY; returns its RESULT or FAILED, its output and the java processes seen below it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TASK, f"{day.isoformat()}T00:00:00+00:00"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    java: set[str] = set()
    cpu: dict[int, float] = {}  # pid -> CPU seconds, sampled every 50 ms (the benchmark sums them)
    started = time.monotonic()
    deadline = started + timeout
    try:
        while proc.poll() is None:
            for child in [psutil.Process(proc.pid), *_descendants(proc.pid)]:
                try:
                    times = child.cpu_times()
                    cpu[child.pid] = max(cpu.get(child.pid, 0.0), times.user + times.system)
                    if child.name() == "java" or Path(child.exe()).name == "java":
                        java.add(" ".join(child.cmdline()[:3]))
                except psutil.Error:
                    pass
            assert time.monotonic() < deadline, "\n".join(lines[-40:])
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
    out = {
        "output": "\n".join(lines),
        "java": java,
        "returncode": proc.returncode,
        "wall_s": time.monotonic() - started,
        "cpu_s": sum(cpu.values()),
    }
    for line in lines:
        if line.startswith("RESULT "):
            out.update(json.loads(line[len("RESULT ") :]))
        if line.startswith("FAILED "):
            out["failed"] = json.loads(line[len("FAILED ") :])
    return out


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _stats(uri: str, day: date) -> dict[str, list[dict]]:
    db = pymongo.MongoClient(uri).get_default_database()
    return {name: sorted(db[name].find({"date": day.isoformat()}), key=lambda d: d["_id"]) for name in STATS}


def test_connect_is_a_thin_client_and_writes_what_the_local_target_writes(connect_stack, landed):
    local_uri = _database(connect_stack, landed)
    connect_uri = _database(connect_stack, landed)

    local = _run_task(_task_env(connect_stack, landed, local_uri, "local"), DAY1)
    assert "result" in local, local["output"][-4000:]
    assert local["operator"] == "FlightsSparkLocalOperator"
    assert local["java"], "the watch below the task process must see the local target's JVM"

    thin = _run_task(_task_env(connect_stack, landed, connect_uri, "connect"), DAY1)
    assert "result" in thin, thin["output"][-4000:]
    assert thin["operator"] == "FlightsSparkConnectOperator"
    assert thin["java"] == set(), f"a JVM started below the connect task: {thin['java']}"
    assert thin["spark_context"] is False  # no SparkContext (and so no py4j gateway) in the task process
    assert f"on {connect_stack.connect_url}" in thin["output"]

    assert thin["result"]["flights"] == local["result"]["flights"] == 842
    assert thin["result"]["carriers"] == local["result"]["carriers"]
    expected = _stats(local_uri, DAY1)
    got = _stats(connect_uri, DAY1)
    assert len(got[flights.DELAY_STATS]) == 14 and len(got[flights.ORIGIN_WEATHER]) == 3
    assert got == expected  # every document, every field, every value


def test_two_days_at_once_in_sessions_of_their_own(connect_stack, landed):
    together = _database(connect_stack, landed, (DAY1, DAY2))
    apart = _database(connect_stack, landed, (DAY1, DAY2))
    url = connect_stack.connect_url
    env = _task_env(connect_stack, landed, together, "connect")
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DAYS, url, together, together.rsplit("/", 1)[1], str(landed / "landing")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(line[len("RESULT ") :])
    assert result["errors"] == []
    assert result["views"] == {"a": True, "b": False, "sessions": 2}
    assert {d: r["flights"] for d, r in result["results"].items()} == {"2013-01-01": 842, "2013-01-02": 943}

    for day in (DAY1, DAY2):  # the same days one after the other, in another database
        alone = _run_task(_task_env(connect_stack, landed, apart, "connect"), day)
        assert "result" in alone, alone["output"][-4000:]
    for day in (DAY1, DAY2):
        assert _stats(together, day) == _stats(apart, day)


def test_a_server_killed_mid_job_is_one_sentence_and_the_retry_succeeds(connect_stack, landed):
    uri = _database(connect_stack, landed)
    env = _task_env(connect_stack, landed, uri, "connect")
    url = connect_stack.connect_url
    killed = []

    def kill_when_the_job_runs(line: str) -> None:
        if "Spark | connect session" in line and not killed:
            time.sleep(0.5)  # the job's first plan is on the server
            pgid = connect_stack.running("spark-connect")
            os.killpg(pgid, signal.SIGKILL)
            killed.append(time.monotonic())

    try:
        first = _run_task(env, DAY1, on_line=kill_when_the_job_runs)
    finally:
        connect_stack.stop("spark-connect")  # the pid file of the killed server
    assert killed, first["output"][-3000:]
    assert first.get("failed"), first["output"][-3000:]
    assert first["failed"]["type"] == "TransientError"  # not AirflowFailException: Airflow retries the task
    message = first["failed"]["message"]
    assert message.startswith(f"the Spark Connect server at {url}/ did not answer or restarted during the job for 2013-01-01 (")
    assert message.endswith("; Airflow retries the task (./dev up starts the server).")
    assert "\n" not in message and "Traceback" not in message
    assert time.monotonic() - killed[0] < 60  # the client's retries are bounded

    connect_stack.start_spark_connect()  # back, as a new process that knows no session of ours
    retry = _run_task(env, DAY1)
    assert "result" in retry, retry["output"][-4000:]
    stats = _stats(uri, DAY1)
    assert sum(d["flights"] for d in stats[flights.DELAY_STATS]) == 842
    assert len(stats[flights.ORIGIN_WEATHER]) == 3


def test_no_connect_server_is_the_same_sentence_within_the_bounded_retries(connect_stack, landed, monkeypatch):
    from datacloud import spark
    from datacloud.errors import TransientError
    from datacloud.localstack import free_port

    url = f"sc://127.0.0.1:{free_port()}"  # nothing listens here
    uri = _database(connect_stack, landed)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        spark.run_connect("2013-01-01", landed / "landing", uri, uri.rsplit("/", 1)[1], url)
    took = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(
        f"the Spark Connect server at {url} did not answer or restarted during the job for 2013-01-01 (gRPC UNAVAILABLE: "
    )
    assert "\n" not in message
    assert took < 3 * spark.CONNECT_RETRY_S, took
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ  # a classic session started later in this process stays classic
