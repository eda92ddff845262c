"""DAG integrity for every file in dags/: imports, conventions, no I/O at parse time.

Each file is parsed on its own in a fresh interpreter (as the DAG processor
does) with Connection and Variable lookups made to raise and every SQL
statement counted, and its parse time is recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))

PARSE = r"""
import json, sys, time
from unittest import mock

queries = []
lookups = []

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "before_cursor_execute")
def _count(conn, cursor, statement, *a):
    queries.append(statement.split()[0] if statement else "")

def _forbid(what):
    def f(*a, **k):
        lookups.append(what)
        raise RuntimeError(f"{what} at parse time")
    return f

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Variable
from airflow.sdk.definitions.connection import Connection
import airflow.models.variable as mv
import airflow.models.connection as mc

patches = [
    mock.patch.object(Variable, "get", _forbid("Variable.get")),
    mock.patch.object(Connection, "get", _forbid("Connection.get")),
    mock.patch.object(mv.Variable, "get", _forbid("Variable.get")),
    mock.patch.object(mc.Connection, "get_connection_from_secrets", _forbid("Connection lookup")),
]
for p in patches:
    p.start()
queries.clear()
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
elapsed = time.perf_counter() - start
out = {"elapsed": elapsed, "errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()}, "queries": queries, "lookups": lookups, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tags": sorted(dag.tags or []),
        "owner": sorted({t.owner for t in dag.tasks}),
        "retries": sorted({t.retries for t in dag.tasks}),
        "doc_md": bool(dag.doc_md and dag.doc_md.strip()),
        "tasks": len(dag.tasks),
        "schedule": type(dag.timetable).__name__,
        "params": {k: {**dict(v.schema), "description": v.description} for k, v in dag.params.items()},
        "timeouts": {
            t.task_id: t.execution_timeout.total_seconds() if t.execution_timeout is not None else None for t in dag.tasks
        },
    }
print("RESULT" + json.dumps(out))
"""


def parse(path: Path) -> dict:
    env = os.environ.copy()
    proc = subprocess.run([sys.executable, "-c", PARSE, str(path)], capture_output=True, text=True, env=env, timeout=180)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, f"parsing {path.name} crashed:\n{proc.stderr[-3000:]}"
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict]:
    results = {p.name: parse(p) for p in DAG_FILES}
    record = {name: round(r["elapsed"], 4) for name, r in results.items()}
    out = Path(os.environ["AIRFLOW_HOME"]).parent / "dag-parse-times.json"
    out.write_text(json.dumps(record, indent=2))
    print("\nDAG parse time (s): " + ", ".join(f"{k}={v}" for k, v in record.items()))
    return results


def test_there_are_dags() -> None:
    assert "inventory_report.py" in {p.name for p in DAG_FILES}


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file(path: Path, parsed: dict[str, dict]) -> None:
    result = parsed[path.name]
    assert not result["errors"], f"import errors: {result['errors']}"
    assert result["dags"], f"{path.name} defines no DAG"
    assert not result["lookups"], f"{path.name} looks up {result['lookups']} at parse time"
    assert not result["queries"], f"{path.name} runs SQL at parse time: {result['queries'][:5]}"
    # Goal is 0.2 s (BENCHMARKS.md); this bound only catches gross regressions on a loaded CI box.
    assert result["elapsed"] < 5, f"{path.name} took {result['elapsed']:.2f}s to parse"
    for dag_id, dag in result["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["owner"] == ["datacloud"], f"{dag_id} owners {dag['owner']}"
        assert min(dag["retries"]) >= 2, f"{dag_id} has tasks with retries {dag['retries']}"
        assert dag["doc_md"], f"{dag_id} has no doc_md"
        for task_id, timeout in dag["timeouts"].items():
            # no task may hang forever; none needs more than the provisioning steps' 2 hours
            assert timeout is not None, f"{dag_id}.{task_id} has no execution_timeout"
            assert 0 < timeout <= 2 * 3600, f"{dag_id}.{task_id} execution_timeout {timeout}s"
        for name, schema in dag["params"].items():
            assert schema.get("title") and schema.get("description"), f"{dag_id} Param {name} needs a title and a description"
            assert schema.get("type"), f"{dag_id} Param {name} needs a type"


def test_parse_time_guard_can_fail(tmp_path: Path) -> None:
    """The checks above are real: a DAG that reads a Variable at parse time is caught."""
    bad = tmp_path / "bad_dag.py"
    bad.write_text("from airflow.sdk import DAG, Variable\nVariable.get('x')\nwith DAG('bad', schedule=None):\n    pass\n")
    result = parse(bad)
    assert result["lookups"] == ["Variable.get"]


def test_timeout_guard_can_fail(tmp_path: Path) -> None:
    """A task without an execution_timeout is seen (the check in test_dag_file is real)."""
    bad = tmp_path / "no_timeout_dag.py"
    bad.write_text(
        "from datetime import timedelta\n"
        "from airflow.sdk import DAG, task\n"
        "with DAG('no_timeout', schedule=None):\n"
        "    task(task_id='forever')(lambda: None)()\n"
        "    task(task_id='bounded', execution_timeout=timedelta(minutes=1))(lambda: None)()\n"
    )
    assert parse(bad)["dags"]["no_timeout"]["timeouts"] == {"forever": None, "bounded": 60.0}
