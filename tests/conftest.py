"""Shared fixtures: real local services on free ports, always stopped afterwards.

Tests never use the developer's stack (ports 27017/8080, .data/): each
session gets its own data folder and ports, so tests can run while
``./dev up`` is running and helpers can run suites side by side.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))
sys.path.insert(0, str(ROOT))

# Airflow reads its configuration when first imported: give the test process its
# own AIRFLOW_HOME (never the developer's) before any test module imports it.
_TEST_HOME = Path(tempfile.mkdtemp(prefix="datacloud-tests-"))
os.environ["AIRFLOW_HOME"] = str(_TEST_HOME / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["DATACLOUD_DATA_DIR"] = str(_TEST_HOME / "data")
# Tests write inventories into temporary folders (pytest's, the labs'): they are inventory folders here,
# for the test process and for the Airflow stacks it starts (their environment is this one).
os.environ.setdefault("DATACLOUD_INVENTORY_DIRS", tempfile.gettempdir())

from datacloud.localstack import Stack, ferretdb_binary, free_port  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests without a layer marker are unit tests; the folder decides otherwise."""
    layers = {"unit", "dags", "integration", "apiserver", "lab", "e2e", "browser", "bench"}
    for item in items:
        if layers & {m.name for m in item.iter_markers()}:
            continue
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        folder = parts[0] if len(parts) > 1 else "unit"
        item.add_marker(getattr(pytest.mark, folder if folder in layers else "unit"))


@pytest.fixture(scope="session")
def stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Make isolated stacks (own data folder and ports); all are stopped at the end."""
    made: list[Stack] = []

    def make(**ports: int) -> Stack:
        stack = Stack(
            data_dir=tmp_path_factory.mktemp("stack"),
            airflow_port=ports.get("airflow_port") or free_port(),
            mongo_port=ports.get("mongo_port") or free_port(),
            spark_port=ports.get("spark_port") or free_port(),
            spark_ui_port=ports.get("spark_ui_port") or free_port(),
        )
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.down()


@pytest.fixture(scope="session")
def ferretdb(stack_factory) -> Stack:
    """A real FerretDB (SQLite backend) on a free port for this test session."""
    if not ferretdb_binary().exists():
        pytest.fail("FerretDB is not built; run ./dev setup")
    stack = stack_factory()
    stack.start_ferretdb()
    return stack


@pytest.fixture
def mongo_uri(ferretdb: Stack) -> str:
    return ferretdb.mongo_uri


@pytest.fixture(scope="session")
def airflow_stack(stack_factory) -> Iterator[Stack]:
    """FerretDB + ``airflow standalone`` on free ports, for integration and e2e tests."""
    stack = stack_factory()
    stack.start_ferretdb()
    stack.start_airflow()
    return stack


@pytest.fixture(scope="session")
def airflow_api(airflow_stack: Stack):
    from datacloud.api import AirflowAPI

    return AirflowAPI(airflow_stack.airflow_url, "admin", airflow_stack.admin_password())


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The test process's Airflow metadata DB (SQLite under the session AIRFLOW_HOME), migrated once."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / "airflow.db").exists():
        airflow = str(Path(sys.executable).parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return home


@pytest.fixture
def airflow_env(airflow_db: Path, ferretdb: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """Environment for ``dag.test()`` in-process: the session's Airflow DB, FerretDB connections.

    AIRFLOW_HOME stays the session's (Airflow has read it at import); the rest of
    the stack's env (connections, Mongo URI, Spark jars) is applied per test.
    """
    for key, value in ferretdb.env().items():
        if key.startswith("AIRFLOW__") or key == "AIRFLOW_HOME":
            continue
        monkeypatch.setenv(key, value)
    return ferretdb


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_TEST_HOME, ignore_errors=True)
    # py4j logs from finalizers at interpreter exit, after pytest closed its streams;
    # keep the summary line the last thing a reader (or CI) sees.
    logging.getLogger("py4j").setLevel(logging.CRITICAL)
    logging.raiseExceptions = False


def pytest_report_header(config: pytest.Config) -> str:
    return f"datacloud tests; root {ROOT}; uid {os.getuid()}"
