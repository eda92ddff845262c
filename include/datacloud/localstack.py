"""The local stack: FerretDB, a Spark Connect server, ``airflow standalone`` and optionally Spark standalone.

Each service starts in its own process group and its pid file records that
group and the process start time, so ``down`` stops exactly what ``up``
started (never a recycled pid) and leaves the data in place.

The Spark Connect server is one JVM (``local[2]``, the MongoDB connector jars,
a bounded heap) on 127.0.0.1; the flights transform runs on it as a thin
client (``DATACLOUD_SPARK_TARGET=connect``, the stack's default). Its port is
``DATACLOUD_SPARK_CONNECT_PORT`` when set, else the one recorded in
``run/spark-connect.port`` at its first start (15002, Spark Connect's own
default, for the developer's stack when free; a free port otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from datacloud import config
from datacloud.errors import UserError

log = logging.getLogger(__name__)

SERVICES = ("airflow", "spark-connect", "spark-worker", "spark-master", "ferretdb")  # stop order
LOOPBACK = "127.0.0.1"  # every port the stack opens binds here
# The account stages use for the Airflow REST API (connection datacloud_airflow_api).
# The simple auth manager has four fixed roles (viewer < user < op < admin); op is the
# lowest that may write connections (docs/security.md says what else it may do).
STAGES_USER = "datacloud-stages"
STAGES_ROLE = "op"
CONNECT_DEFAULT_PORT = 15002  # Spark Connect's own default
CONNECT_MEMORY = "2g"  # the Connect server's driver heap (it runs every local Spark job of the stack)
CONNECT_START_TIMEOUT_S = 180
TARGETS = ("connect", "local", "standalone", "kubernetes")  # datacloud.spark.TARGETS, without importing pyspark


def _versions() -> dict:
    from datacloud.render import versions

    return versions()["local"]


def ferretdb_binary() -> Path:
    return config.cache_dir() / "bin" / f"ferretdb-{_versions()['ferretdb']}"


def spark_jars_dir() -> Path:
    v = _versions()
    return config.cache_dir() / "jars" / f"mongo-spark-connector_{v['scala_binary']}-{v['mongo_spark_connector']}"


def spark_jars() -> list[Path]:
    return sorted(spark_jars_dir().glob("*.jar"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def java_home() -> str | None:
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if not java:
        return None
    return str(Path(java).resolve().parent.parent)


@dataclass
class Stack:
    """Where the local stack lives and which ports it uses."""

    data_dir: Path = field(default_factory=config.data_dir)
    airflow_port: int = field(default_factory=lambda: int(os.environ.get("DATACLOUD_AIRFLOW_PORT", "8080")))
    mongo_port: int = field(default_factory=lambda: int(os.environ.get("DATACLOUD_MONGO_PORT", "27017")))
    spark_port: int = field(default_factory=lambda: int(os.environ.get("DATACLOUD_SPARK_PORT", "7077")))
    spark_ui_port: int = field(default_factory=lambda: int(os.environ.get("DATACLOUD_SPARK_UI_PORT", "8081")))
    # None: the port recorded at the Connect server's first start (see the module doc)
    spark_connect_port: int | None = field(
        default_factory=lambda: (
            int(os.environ["DATACLOUD_SPARK_CONNECT_PORT"]) if os.environ.get("DATACLOUD_SPARK_CONNECT_PORT") else None
        )
    )

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def airflow_home(self) -> Path:
        return self.data_dir / "airflow"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/{config.MONGO_DATABASE}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def spark_master(self) -> str:
        return f"spark://127.0.0.1:{self.spark_port}"

    @property
    def connect_port_file(self) -> Path:
        return self.run_dir / "spark-connect.port"

    @property
    def connect_port(self) -> int:
        """The Spark Connect server's port: set, recorded at its first start, or the one it would take."""
        if self.spark_connect_port:
            return self.spark_connect_port
        try:
            return int(self.connect_port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return CONNECT_DEFAULT_PORT

    @property
    def connect_url(self) -> str:
        return f"sc://{LOOPBACK}:{self.connect_port}"

    @property
    def spark_target(self) -> str:
        """Where the stack's Airflow runs the flights transform: ``DATACLOUD_SPARK_TARGET``, else the Connect server."""
        value = os.environ.get("DATACLOUD_SPARK_TARGET", "").strip().lower() or "connect"
        if value not in TARGETS:
            raise UserError(f"DATACLOUD_SPARK_TARGET must be one of {', '.join(TARGETS)} (got {value!r}).")
        return value

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    def env(self) -> dict[str, str]:
        """Environment for Airflow and for shells (``./dev env`` prints it); it holds no password."""
        mongo_conn = {"conn_type": "mongo", "host": "127.0.0.1", "port": self.mongo_port, "schema": config.MONGO_DATABASE}
        spark_conn = {
            "conn_type": "spark",
            "host": "spark://127.0.0.1",
            "port": self.spark_port,
            "extra": {"deploy-mode": "client"},
        }
        # The provider's Spark Connect type (SparkConnectHook builds sc://127.0.0.1:PORT/ from it).
        connect_conn = {"conn_type": "spark_connect", "host": f"sc://{LOOPBACK}", "port": self.connect_port}
        env = {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(config.REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(config.REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{STAGES_USER}:{STAGES_ROLE}",
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.airflow_port),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "DATACLOUD_DATA_DIR": str(self.data_dir),
            "DATACLOUD_MONGO_URI": self.mongo_uri,
            "DATACLOUD_SPARK_JARS": ",".join(str(p) for p in spark_jars()),
            "DATACLOUD_SPARK_MASTER": self.spark_master,
            "AIRFLOW_CONN_DATACLOUD_MONGO": json.dumps(mongo_conn),
            "AIRFLOW_CONN_DATACLOUD_SPARK": json.dumps(spark_conn),
            "AIRFLOW_CONN_DATACLOUD_SPARK_CONNECT": json.dumps(connect_conn),
            "DATACLOUD_SPARK_TARGET": self.spark_target,
            "SPARK_LOCAL_IP": LOOPBACK,  # the Spark web UIs bind here too
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            # airflow standalone starts its components as `airflow ...` from PATH
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        jh = java_home()
        if jh:
            env["JAVA_HOME"] = jh
        return env

    # --- process bookkeeping -------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.run_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env, "DATACLOUD_STACK": str(self.data_dir)},
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(cwd or config.REPO_ROOT),
            start_new_session=True,
        )
        logf.close()
        self._pidfile(name).write_text(json.dumps({"pid": proc.pid, "start": process_start_time(proc.pid), "argv": argv[:2]}))
        log.info("Stack | started %s (pgid %s), log %s", name, proc.pid, self.run_dir / f"{name}.log")
        return proc.pid

    def running(self, name: str) -> int | None:
        """The process group id of a service we started that is still alive."""
        try:
            info = json.loads(self._pidfile(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        pid = int(info["pid"])
        if process_start_time(pid) != info.get("start"):
            return None
        return pid

    def stop(self, name: str, timeout: float = 30) -> bool:
        pgid = self.running(name)
        pidfile = self._pidfile(name)
        if pgid is None:
            pidfile.unlink(missing_ok=True)
            return False
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            while _group_alive(pgid) and time.monotonic() < deadline + 10:
                time.sleep(0.1)
        # Children that left the group (new sessions) still carry our marker.
        for pid in self.strays():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)
        log.info("Stack | stopped %s (pgid %s)", name, pgid)
        return True

    def strays(self) -> list[int]:
        """Live processes started by this stack (they inherit DATACLOUD_STACK) outside a running service's group."""
        marker = f"DATACLOUD_STACK={self.data_dir}".encode()
        groups = {pg for pg in (self.running(n) for n in SERVICES) if pg}
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) not in groups:
                out.append(int(entry.name))
        return out

    # --- services -------------------------------------------------------------

    def start_ferretdb(self) -> None:
        if self.running("ferretdb"):
            return
        binary = ferretdb_binary()
        if not binary.exists():
            raise UserError(f"FerretDB is not built ({binary} is missing); run ./dev setup.")
        if port_open(self.mongo_port):
            raise UserError(f"port {self.mongo_port} is already in use by another program; stop it or set DATACLOUD_MONGO_PORT.")
        data = self.data_dir / "ferretdb"
        data.mkdir(parents=True, exist_ok=True)
        self._start(
            "ferretdb",
            [
                str(binary),
                "--handler=sqlite",
                f"--sqlite-url=file:{data}/",
                f"--listen-addr={LOOPBACK}:{self.mongo_port}",
                "--telemetry=disable",
                "--debug-addr=-",
                f"--state-dir={data}",
                "--log-level=WARN",
            ],
            {},
        )
        self._wait("FerretDB", lambda: port_open(self.mongo_port), 30, "ferretdb")

    def start_airflow(self) -> None:
        if self.running("airflow"):
            return
        if port_open(self.airflow_port):
            raise UserError(
                f"port {self.airflow_port} is already in use by another program; stop it or set DATACLOUD_AIRFLOW_PORT."
            )
        self.ensure_passwords()  # before the auth manager would generate them
        if self.spark_target == "connect":
            self.start_spark_connect()  # the DAG's transform runs there
        airflow = str(Path(sys.executable).parent / "airflow")
        self._start("airflow", [airflow, "standalone"], self.env())
        self._wait("Airflow", self.airflow_healthy, 240, "airflow")
        self._wait("the admin password file", self.password_file.exists, 60, "airflow")
        self.ensure_pools()
        self.ensure_api_connection()

    def ensure_api_connection(self) -> None:
        """Store ``datacloud_airflow_api`` (stages write the connections they create through the API) in the
        metadata DB, as the stages' own user: tasks read it when they need it; it is in no process environment."""
        from datacloud import connections
        from datacloud.api import AirflowAPI

        passwords = self.ensure_passwords()
        admin = AirflowAPI(self.airflow_url, "admin", passwords["admin"])
        connections.put(
            connections.API_CONN_ID, "http", host=self.airflow_url, login=STAGES_USER, password=passwords[STAGES_USER], api=admin
        )

    def ensure_pools(self) -> None:
        from datacloud.api import AirflowAPI

        api = AirflowAPI(self.airflow_url, "admin", self.admin_password())
        state = api.ensure_pool(config.NODES_POOL, config.NODES_POOL_SLOTS, "datacloud: per-node provisioning tasks")
        log.info("Stack | pool %s %s", config.NODES_POOL, state)

    def start_spark(self) -> None:
        spark_home = Path(__import__("pyspark").__file__).parent
        spark_class = str(spark_home / "bin" / "spark-class")
        env = {**self.env(), "SPARK_HOME": str(spark_home), "SPARK_LOG_DIR": str(self.run_dir), "SPARK_NO_DAEMONIZE": "1"}
        if not self.running("spark-master"):
            self._start(
                "spark-master",
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    LOOPBACK,
                    "--port",
                    str(self.spark_port),
                    "--webui-port",
                    str(self.spark_ui_port),
                ],
                env,
            )
            self._wait("Spark master", lambda: port_open(self.spark_port), 60, "spark-master")
        if not self.running("spark-worker"):
            self._start(
                "spark-worker",
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    LOOPBACK,
                    "--cores",
                    "2",
                    "--memory",
                    "2g",
                    "--webui-port",
                    "0",
                    self.spark_master,
                ],
                env,
            )

    def _choose_connect_port(self) -> int:
        """The Connect server's port for this start; recorded so ``env()`` and later starts agree."""
        if self.spark_connect_port:
            port = self.spark_connect_port
            if port_open(port):
                raise UserError(f"port {port} is already in use by another program; stop it or set DATACLOUD_SPARK_CONNECT_PORT.")
            return port
        if self.connect_port_file.exists():
            port = self.connect_port
            deadline = time.monotonic() + 10  # a server stopped a moment ago may still hold it
            while port_open(port) and time.monotonic() < deadline:
                time.sleep(0.5)
            if port_open(port):
                raise UserError(
                    f"port {port} (recorded in {self.connect_port_file}) is already in use by another program; "
                    "stop it, or delete that file and the stack picks another port."
                )
            return port
        own = self.data_dir.resolve() == config.data_dir().resolve()
        port = CONNECT_DEFAULT_PORT if own and not port_open(CONNECT_DEFAULT_PORT) else free_port()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.connect_port_file.write_text(f"{port}\n")
        return port

    def connect_argv(self, port: int) -> list[str]:
        """spark-submit of the Connect server: one JVM, local[2], the connector jars, a bounded heap, loopback only."""
        spark_home = Path(__import__("pyspark").__file__).parent
        conf = {
            "spark.connect.grpc.binding.address": LOOPBACK,
            "spark.connect.grpc.binding.port": str(port),
            "spark.connect.grpc.port.maxRetries": "0",  # the recorded port or fail, never a neighbour
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            "spark.ui.enabled": "false",
            "spark.log.level": "WARN",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.shuffle.partitions": "2",
            "spark.sql.catalogImplementation": "in-memory",
            "spark.sql.warehouse.dir": str(self.data_dir / "spark-connect" / "warehouse"),
            "spark.local.dir": str(self.data_dir / "spark-connect" / "tmp"),
            "spark.driver.extraJavaOptions": "-XX:+UseSerialGC",
        }
        jars = spark_jars()
        if not jars:
            raise UserError(f"the MongoDB Spark connector jars are missing ({spark_jars_dir()}); run ./dev setup.")
        argv = [
            str(spark_home / "bin" / "spark-submit"),
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--name",
            "datacloud Spark Connect",
            "--master",
            "local[2]",
            "--driver-memory",
            CONNECT_MEMORY,
            "--jars",
            ",".join(str(j) for j in jars),
        ]
        for key, value in conf.items():
            argv += ["--conf", f"{key}={value}"]
        return argv

    def start_spark_connect(self) -> None:
        """The Spark Connect server, health-waited: its gRPC port answers and ``spark.range(1).count()`` runs."""
        if self.running("spark-connect"):
            return
        port = self._choose_connect_port()
        work = self.data_dir / "spark-connect"
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        spark_home = Path(__import__("pyspark").__file__).parent
        env = {**self.env(), "SPARK_HOME": str(spark_home), "SPARK_LOG_DIR": str(self.run_dir)}
        self._start("spark-connect", self.connect_argv(port), env, cwd=work)
        self._wait("Spark Connect", lambda: port_open(port), CONNECT_START_TIMEOUT_S, "spark-connect")
        self._wait("a Spark Connect query", lambda: connect_query_ok(self.connect_url), 60, "spark-connect")

    def airflow_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.airflow_url}/api/v2/monitor/health", timeout=3) as r:  # noqa: S310 - loopback
                body = json.load(r)
        except (OSError, ValueError):
            return False
        parts = [body.get(k, {}).get("status") for k in ("metadatabase", "scheduler", "dag_processor")]
        return all(p == "healthy" for p in parts)

    def _wait(self, what: str, check, timeout: float, name: str) -> None:
        start = time.monotonic()
        last = start
        while time.monotonic() - start < timeout:
            if check():
                log.info("Stack | %s ready after %.1fs", what, time.monotonic() - start)
                return
            if not self.running(name):
                tail = _tail(self.run_dir / f"{name}.log")
                raise UserError(f"{what} exited while starting; see {self.run_dir / f'{name}.log'}: {tail}")
            if time.monotonic() - last >= 15:
                log.info("Stack | waiting for %s (%.0fs elapsed)", what, time.monotonic() - start)
                last = time.monotonic()
            time.sleep(0.5)
        raise UserError(f"{what} did not become ready within {timeout:.0f}s; see {self.run_dir / f'{name}.log'}.")

    def up(self, spark: bool = False) -> None:
        self.start_ferretdb()
        self.start_spark_connect()
        if spark:
            self.start_spark()
        self.start_airflow()

    def down(self) -> list[str]:
        stopped = []
        for name in SERVICES:
            if self.stop(name):
                stopped.append(name)
        return stopped

    def ensure_admin_password(self) -> str:
        """The local admin password, generated on first use into the file airflow standalone reads."""
        return self.ensure_passwords()["admin"]

    def ensure_passwords(self) -> dict[str, str]:
        """The admin's and the stages user's passwords; a missing one is generated into the password file (0600)."""
        try:
            passwords = json.loads(self.password_file.read_text())
        except FileNotFoundError:
            passwords = {}
        except ValueError:
            raise UserError(f"{self.password_file} is not JSON; ./dev down, delete it, ./dev up.") from None
        missing = [user for user in ("admin", STAGES_USER) if not passwords.get(user)]
        if missing:
            passwords.update({user: secrets.token_urlsafe(18) for user in missing})
            self.airflow_home.mkdir(parents=True, exist_ok=True)
            tmp = self.password_file.with_name(f".{self.password_file.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(passwords, f)
            os.replace(tmp, self.password_file)
        return passwords

    def admin_password(self) -> str:
        try:
            return json.loads(self.password_file.read_text())["admin"]
        except (FileNotFoundError, KeyError, ValueError):
            raise UserError(f"no admin password at {self.password_file}; start the stack with ./dev up.") from None


def connect_query_ok(url: str, timeout_s: float = 20) -> bool:
    """True when the Connect server at URL answers ``spark.range(1).count()`` (one short session, released)."""
    from datacloud.spark import _connect_mode, connect_session

    with _connect_mode():  # and nothing of it left in this process's environment (airflow inherits it)
        try:
            session = connect_session(url, deadline_s=timeout_s)
        except Exception:  # noqa: BLE001 - not up yet: the caller waits and asks again
            return False
        try:
            return session.range(1).count() == 1
        except Exception:  # noqa: BLE001
            return False
        finally:
            try:
                session.stop()
            except Exception:  # noqa: BLE001, S110 - a session that cannot be released expires on the server
                pass


def process_start_time(pid: int) -> str | None:
    """The start time of process PID (clock ticks since boot, /proc/PID/stat field 22), None when it is gone.

    A pid and its start time name one process: a recycled pid has another start time.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
