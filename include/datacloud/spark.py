"""One PySpark job, four targets: ``local`` (default), ``connect``, ``standalone``, ``kubernetes``.

The target comes from ``DATACLOUD_SPARK_TARGET`` when the DAG file is parsed
(an environment setting, no I/O; the local stack sets ``connect``);
``transform_operator()`` returns the task:

* ``connect`` -- the task is a thin Spark Connect client: it builds the
  ``sc://`` URL from the ``datacloud_spark_connect`` connection (the provider's
  ``SparkConnectHook``), opens a session of its own
  (``SparkSession.builder.remote(url).create()``, so concurrent days share no
  temp view or conf), runs the same job file there and releases the session.
  No JVM starts in the Airflow worker. A server that is down or restarts
  mid-job is one sentence and a ``TransientError``: Airflow retries the task
  (the job's writes are replace-upserts, so a retry rewrites the same
  documents). ``connect_slots()`` transforms run at once, and
  ``max_active_runs()`` sizes the days at once for it.

* ``local`` -- the job runs inside the task process on ``local[2]`` with the
  MongoDB Spark connector jars from ``DATACLOUD_SPARK_JARS``
  (``datacloud.localstack.spark_jars()``). An active SparkSession is reused
  (tests), otherwise one is started and stopped again.
* ``standalone`` -- the provider's ``SparkSubmitOperator`` submits the same job
  file to the ``spark://`` master of the ``datacloud_spark`` connection (client
  mode, so the driver's output is the task log).
* ``kubernetes`` -- the provider's ``SparkKubernetesOperator`` creates a
  SparkApplication rendered from ``manifests/spark/sparkapplication-flights.yaml.j2``
  (connector pinned in manifests/versions.yaml; the image is the one the spark stage
  deployed and recorded in the platform state, registry-qualified); its name is unique per
  dag, run and try so a retry never meets "409 already exists"; the driver log is
  streamed into the task log and the application is deleted when it ends.

Whatever the target, the task then deletes the day's stats documents of
carriers/origins that did not fly that day (``flights.prune_stats``), so the
day's documents are replaced, not merged.

The MongoDB URI reaches the job through the environment (a Secret on
Kubernetes), never through arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datacloud import config
from datacloud.errors import UserError

log = logging.getLogger(__name__)

TARGETS = ("local", "connect", "standalone", "kubernetes")
JOB_FILE = config.JOBS_DIR / "flights_daily_stats.py"
TEMPLATE = "spark/sparkapplication-flights.yaml.j2"
K8S_NAMESPACE = "spark-jobs"  # where the spark stage lets drivers run (ServiceAccount spark)
K8S_JOB_MOUNT = "/opt/datacloud/jobs"
K8S_LANDING_MOUNT = "/data/landing"
# The day's reference files the job reads from the landing zone (its flights come from MongoDB) reach
# the driver and executors as a ConfigMap per application: Airflow runs outside the cluster, so no claim
# is shared with it. A ConfigMap holds at most 1 MiB; the files must fit in this with room for its metadata.
K8S_LANDING_FILES = ("weather.jsonl", "airlines.jsonl")
K8S_LANDING_MAX_BYTES = 900 * 1024
K8S_MONGO_SECRET = "datacloud-mongo-spark"  # noqa: S105 - a Secret name, not a value; key "uri": the connection string for Spark jobs
# Short jobs on a cold JVM: C1-only JIT and the serial GC start faster and use less CPU
# (one day locally: JVM start 19 -> 10 s and first run 35 -> 16 s on a busy 2-core machine).
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")
CONNECT_SLOTS = 2
CONNECT_RUNS_PER_SLOT = 3
# A Connect server that does not answer: the client's own retries of one call (gRPC UNAVAILABLE)
# give up after about CONNECT_RETRY_S seconds (a job's first calls: about twice that); then the
# task fails with one sentence and Airflow retries it. A server that comes back is a new
# process that knows no session of ours, so waiting longer inside the task would not help.
CONNECT_RETRY_S = 10
CONNECT_TASK_TIMEOUT = 15 * 60  # seconds; a day's job takes a few
# What the Connect client says when the server went away or came back as a new process.
_CONNECT_LOST = (
    "StatusCode.UNAVAILABLE",
    "RETRIES_EXCEEDED",
    "INVALID_HANDLE.SESSION_CHANGED",
    "INVALID_HANDLE.SESSION_NOT_FOUND",
    "INVALID_HANDLE.SESSION_CLOSED",
    "INVALID_HANDLE.OPERATION_NOT_FOUND",
    "Connection refused",
    "Socket closed",
    "failed to connect",
)


def target() -> str:
    value = os.environ.get("DATACLOUD_SPARK_TARGET", "local").strip().lower() or "local"
    if value not in TARGETS:
        raise UserError(f"DATACLOUD_SPARK_TARGET must be one of {', '.join(TARGETS)} (got {value!r}).")
    return value


def local_slots() -> int:
    """How many local Spark jobs may run at once (``DATACLOUD_SPARK_LOCAL_SLOTS``, default 1)."""
    raw = os.environ.get("DATACLOUD_SPARK_LOCAL_SLOTS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"DATACLOUD_SPARK_LOCAL_SLOTS must be a whole number >= 1 (got {raw!r}).")
    return int(raw)


def connect_slots() -> int:
    """How many transforms the Connect server runs at once (``DATACLOUD_SPARK_CONNECT_SLOTS``, default 2).

    The local server is ``local[2]``: two jobs keep both of its cores busy (one job's
    stages are mostly single-partition); more only queue inside the JVM.
    """
    raw = os.environ.get("DATACLOUD_SPARK_CONNECT_SLOTS", str(CONNECT_SLOTS))
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"DATACLOUD_SPARK_CONNECT_SLOTS must be a whole number >= 1 (got {raw!r}).")
    return int(raw)


def max_active_runs(kind: str | None = None) -> int:
    """How many days of etl_flights_daily run at once on target KIND (default: :func:`target`).

    ``DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS`` when set (``flights.max_active_runs``); with the
    connect target otherwise ``CONNECT_RUNS_PER_SLOT`` days per Connect slot, so that the
    light tasks of the next days (land, ingest, quality) run while the server works; on the
    other targets the pipeline's own default.
    """
    from datacloud.pipelines import flights

    if os.environ.get("DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS") or (kind or target()) != "connect":
        return flights.max_active_runs()
    return CONNECT_RUNS_PER_SLOT * connect_slots()


def job_arguments(day: str, landing: str, database: str) -> list[str]:
    return ["--date", day, "--landing", landing, "--database", database]


def application_name(dag_id: str, run_id: str, try_number: int, day: str) -> str:
    """A DNS-1123 name unique per dag, run and try: ``etl-flights-daily-20130101-3f2a9c1b-t2``.

    The run id is hashed (it holds ``:`` and ``+``); the date keeps the name readable.
    Kept under 53 characters so the operator's ``-driver`` pod and ``-ui-svc`` names fit 63.
    """
    digest = hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:8]
    stem = _DNS_LABEL.sub("-", dag_id.lower().replace("_", "-")).strip("-")[:30].rstrip("-")
    return f"{stem}-{day.replace('-', '')}-{digest}-t{int(try_number)}"


def recorded_spark_image() -> str:
    """The Spark image the spark stage deployed (platform state), or one sentence saying what to do."""
    from datacloud.images import qualified
    from datacloud.platform_state import load_state

    recorded = str(load_state().facts("spark").get("image") or "")
    if not recorded:
        raise UserError(
            "the spark stage has recorded no Spark image; run provision_platform with the spark stage "
            "(and images.registry in the inventory) before the kubernetes Spark target."
        )
    if not qualified(recorded):
        raise UserError(
            f"the recorded Spark image {recorded!r} names no registry; set images.registry and run the spark stage again."
        )
    return recorded


def landing_configmap_name(application: str) -> str:
    """The ConfigMap with the day's landing files of one application (one per run and try, like its name)."""
    return f"{application}-landing"


def landing_configmap_data(landing_root: Path, day: str) -> dict[str, str]:
    """The job's landing files of DAY ({file name: text}), or one sentence when one is missing or they are too big."""
    folder = Path(landing_root) / "flights" / f"date={day}"
    data: dict[str, str] = {}
    size = 0
    for name in K8S_LANDING_FILES:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing; run the land task for {day} first (it writes the day's drop).")
        size += path.stat().st_size
        if size > K8S_LANDING_MAX_BYTES:
            raise UserError(
                f"the landing files of {day} ({', '.join(K8S_LANDING_FILES)}) are more than {K8S_LANDING_MAX_BYTES // 1024} KiB, "
                "more than a ConfigMap can carry to the SparkApplication; use the connect or standalone Spark target for this day."
            )
        data[name] = path.read_text(encoding="utf-8")
    return data


def recorded_job_cpu() -> dict[str, str]:
    """The CPU the spark stage gives drivers and executors (platform state), else the pipeline's defaults."""
    from datacloud.platform_state import load_state

    recorded = load_state().facts("spark")
    return {role: str(recorded.get(f"job_{role}_cpu") or cpu) for role, cpu in default_job_cpu().items()}


def default_job_cpu() -> dict[str, str]:
    """The pipeline's own CPU for drivers and executors (manifests/versions.yaml, flights.job_*_cpu)."""
    from datacloud.render import versions

    f = versions()["flights"]
    return {role: str(f[f"job_{role}_cpu"]) for role in ("driver", "executor")}


def render_application(
    *,
    name: str,
    day: str,
    database: str,
    namespace: str = K8S_NAMESPACE,
    image: str | None = None,
    cpu: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The SparkApplication for one run (pure: the render test checks it against our schema).

    ``image``: the Spark image to run (the task passes :func:`recorded_spark_image`); by
    default the repository-relative pin, for rendering only.
    """
    from datacloud.images import own_image, pull_policy
    from datacloud.render import render_template

    image = image or own_image(None, "spark")
    cpu = cpu or default_job_cpu()
    (app,) = render_template(
        TEMPLATE,
        cpu=cpu,
        image=image,
        pull_policy=pull_policy(image),
        name=name,
        namespace=namespace,
        day=day,
        arguments=job_arguments(day, K8S_LANDING_MOUNT, database),
        job_file=JOB_FILE.name,
        job_mount=K8S_JOB_MOUNT,
        job_configmap=job_configmap_name(),
        landing_mount=K8S_LANDING_MOUNT,
        landing_configmap=landing_configmap_name(name),
        landing_files=list(K8S_LANDING_FILES),
        mongo_secret=K8S_MONGO_SECRET,
    )
    return app


def job_configmap_name() -> str:
    """ConfigMap holding the job file; the content hash in the name makes each version immutable."""
    digest = hashlib.sha256(JOB_FILE.read_bytes()).hexdigest()[:10]
    return f"datacloud-job-flights-{digest}"


# --- local ------------------------------------------------------------------------------


def _job_module():
    spec = importlib.util.spec_from_file_location("datacloud_job_flights_daily_stats", JOB_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def connector_jars() -> str:
    """The MongoDB Spark connector jars, comma-separated (``DATACLOUD_SPARK_JARS`` or the ./dev setup cache)."""
    jars = os.environ.get("DATACLOUD_SPARK_JARS", "")
    if not jars:
        from datacloud.localstack import spark_jars

        jars = ",".join(str(p) for p in spark_jars())
    if not jars:
        raise UserError("the MongoDB Spark connector jars are missing (DATACLOUD_SPARK_JARS is empty); run ./dev setup.")
    return jars


def local_session(jars: str | None = None):
    """A local[2] SparkSession with the connector jars; returns (session, created_here, seconds)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False, 0.0
    started = time.monotonic()
    session = (
        SparkSession.builder.master("local[2]")
        .appName("flights_daily_stats")
        .config("spark.jars", jars or connector_jars())
        .config("spark.driver.memory", "1g")
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("WARN")
    return session, True, time.monotonic() - started


def run_local(day: str, landing_root: Path, uri: str, database: str) -> dict[str, Any]:
    """Run the job in this process; returns the job's result plus the JVM start and work seconds."""
    session, created, jvm_s = local_session()
    try:
        landing_day = str(Path(landing_root) / "flights" / f"date={day}")
        result = _job_module().run(session, day, landing_day, uri, database)
    finally:
        if created:
            session.stop()
    result["jvm_start_seconds"] = round(jvm_s, 2)
    log.info("Spark | local job for %s: JVM start %.1fs, work %.1fs", day, jvm_s, result["seconds"])
    return result


# --- connect --------------------------------------------------------------------------------

_connect_mode_lock = threading.Lock()
_connect_mode_users = 0


@contextlib.contextmanager
def _connect_mode() -> Iterator[None]:
    """pyspark's functions build Connect columns while SPARK_CONNECT_MODE_ENABLED is set; keep it set only
    while a Connect job of this process runs, so a local session started later in the process is classic."""
    global _connect_mode_users
    with _connect_mode_lock:
        was_set = "SPARK_CONNECT_MODE_ENABLED" in os.environ and _connect_mode_users == 0
        _connect_mode_users += 1
        os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    try:
        yield
    finally:
        with _connect_mode_lock:
            _connect_mode_users -= 1
            if _connect_mode_users == 0 and not was_set:
                os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)


def connect_url(conn_id: str = config.SPARK_CONNECT_CONN_ID) -> str:
    """The ``sc://`` URL of the connection (the provider's Spark Connect type), through its hook."""
    from airflow.providers.apache.spark.hooks.spark_connect import SparkConnectHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        url = SparkConnectHook(conn_id=conn_id).get_connection_url()
    except AirflowNotFoundException:
        raise UserError(
            f"the connection {conn_id} is not defined; create it (type Spark Connect, host sc://HOST, port) "
            "or start the local stack with ./dev up."
        ) from None
    except ValueError as exc:
        raise UserError(f"the connection {conn_id} is not a Spark Connect URL ({exc}); set host sc://HOST and port.") from None
    if ";token=" in url:
        from airflow.sdk.log import mask_secret

        mask_secret(url)
    return url


def connect_session(url: str, *, deadline_s: float = CONNECT_RETRY_S):
    """A new Spark Connect session of its own at URL (never the process's default one), whose client
    gives up on an unreachable server after about ``deadline_s`` seconds instead of ten minutes."""
    import warnings

    # pyspark 4.2 warns on every import that it "does not yet fully support pandas >= 3.0.0"; the job
    # hands no pandas objects to Spark, so the warning says nothing about it.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    from pyspark.sql import SparkSession
    from pyspark.sql.connect.client.retries import DefaultPolicy

    with _connect_mode():  # create() sets SPARK_CONNECT_MODE_ENABLED for good; this takes it back after
        session = SparkSession.builder.remote(url).create()
    # 0.2, 0.4, ... 3.2 s between tries (6.2 s), then 4 s each: about deadline_s in all.
    tries = 5 + max(0, int((deadline_s - 6.2) // 4))
    session.client.set_retry_policies(
        [DefaultPolicy(max_retries=tries, initial_backoff=200, backoff_multiplier=2.0, max_backoff=4000, jitter=100)]
    )
    return session


def connect_lost(exc: BaseException) -> bool:
    """True when EXC (or what caused it) says the Connect server went away or restarted: a gRPC call that
    ended UNAVAILABLE, the client's retries given up, or a session or operation the server no longer knows.
    An error of the job itself (a bad column, a failed write) is not."""
    seen = 0
    while exc is not None and seen < 5:
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                if code().name == "UNAVAILABLE":
                    return True
            except Exception:  # noqa: BLE001, S110 - an RPC that has not finished has no code yet
                pass
        text = f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "RetriesExceeded" or any(marker in text for marker in _CONNECT_LOST):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _reason(exc: BaseException) -> str:
    """What the client said, in one short line: the gRPC status and details, else the message's first line."""
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        code = getattr(e, "code", None)
        if callable(code):
            try:
                return f"gRPC {code().name}: {e.details()}"[:200]
            except Exception:  # noqa: BLE001, S112 - not a finished RPC: look further down the chain
                continue
    for e in chain:
        first = (str(e).strip().splitlines() or [""])[0]
        if first and not first.startswith("<") and "RETRIES_EXCEEDED" not in first:
            return first[:200].rstrip(".")
    return type(exc).__name__


def run_connect(day: str, landing_root: Path, uri: str, database: str, url: str) -> dict[str, Any]:
    """Run the job on the Spark Connect server at URL in a session of its own; returns the job's result."""
    from datacloud.errors import TransientError

    started = time.monotonic()
    with _connect_mode():
        session = None
        try:
            session = connect_session(url)
            log.info("Spark | connect session %s on %s for %s", session.session_id, url, day)
            landing_day = str(Path(landing_root) / "flights" / f"date={day}")
            result = _job_module().run(session, day, landing_day, uri, database)
        except Exception as exc:
            if connect_lost(exc):
                raise TransientError(
                    f"the Spark Connect server at {url} did not answer or restarted during the job for {day} "
                    f"({_reason(exc)}); Airflow retries the task (./dev up starts the server)."
                ) from None
            raise
        finally:
            if session is not None:
                try:
                    session.stop()  # releases the session on the server
                except Exception:  # noqa: BLE001, S110 - a server that is gone holds no session
                    pass
    result["client_seconds"] = round(time.monotonic() - started, 2)
    log.info("Spark | connect job for %s on %s: %.1fs (job %.1fs)", day, url, result["client_seconds"], result["seconds"])
    return result


# --- operators ----------------------------------------------------------------------------


def _day(context) -> str:
    from datacloud.pipelines.flights import day_of

    return day_of(context["data_interval_start"], context["data_interval_end"]).isoformat()


def _mongo_for_job():
    """The MongoDB connection (through the hook); the URI is masked in task logs."""
    from datacloud.pipelines.ingest import connect

    mongo = connect()
    if "@" in mongo.uri:
        from airflow.sdk.log import mask_secret

        mask_secret(mongo.uri)
    return mongo


def _finish(day: str, mongo, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prune the day's stats of carriers/origins that did not fly. The job's own result names those that
    did (its stats are grouped over the day's flights); without one (spark-submit, SparkApplication) they
    are read from ``flights``, two ``distinct`` queries that FerretDB answers by a scan."""
    from datacloud.pipelines import flights
    from datacloud.pipelines.ingest import reachable

    if job is not None and job.get("date") == day and "carriers" in job and "origins" in job:
        carriers, origins = sorted(job["carriers"]), sorted(job["origins"])
    else:
        with reachable(mongo.uri):
            carriers = sorted(mongo.db[flights.FLIGHTS].distinct("carrier", {"date": day}))
            origins = sorted(mongo.db[flights.FLIGHTS].distinct("origin", {"date": day}))
    from datetime import date

    pruned = flights.prune_stats(date.fromisoformat(day), mongo, carriers, origins)
    return {"date": day, "carriers": carriers, "origins": origins, "pruned": pruned}


def transform_operator(task_id: str = "transform", **kwargs: Any):
    """The transform task for the configured target (called while the DAG file is parsed)."""
    kind = target()
    if kind == "local":
        # Each local task starts its own JVM; on a small machine several at once only thrash.
        kwargs.setdefault("max_active_tis_per_dag", local_slots())
        return _local_operator_class()(task_id=task_id, **kwargs)
    if kind == "connect":
        from datetime import timedelta

        # The Connect server's slots: more transforms at once only queue inside its JVM.
        kwargs.setdefault("max_active_tis_per_dag", connect_slots())
        kwargs.setdefault("execution_timeout", timedelta(seconds=CONNECT_TASK_TIMEOUT))
        return _connect_operator_class()(task_id=task_id, **kwargs)
    if kind == "standalone":
        return _standalone_operator_class()(task_id=task_id, **kwargs)
    return _kubernetes_operator_class()(task_id=task_id, **kwargs)


def _local_operator_class():
    from airflow.sdk import BaseOperator

    class FlightsSparkLocalOperator(BaseOperator):
        """Runs include/jobs/flights_daily_stats.py on local[2] inside the task process."""

        ui_color = "#fde9b8"

        def execute(self, context):
            from datacloud.pipelines.flights import task_errors
            from datacloud.pipelines.ingest import reachable

            with task_errors():
                day = _day(context)
                mongo = _mongo_for_job()
                try:
                    with reachable(mongo.uri):
                        mongo.client.admin.command("ping")
                    result = run_local(day, config.data_dir() / "landing", mongo.uri, mongo.database)
                    result.update(_finish(day, mongo, result))
                finally:
                    mongo.close()
                return result

    return FlightsSparkLocalOperator


def _connect_operator_class():
    from airflow.sdk import BaseOperator

    class FlightsSparkConnectOperator(BaseOperator):
        """Runs include/jobs/flights_daily_stats.py on the Spark Connect server (a session per task, no JVM here)."""

        ui_color = "#d7ecf9"

        def __init__(self, *, conn_id: str = config.SPARK_CONNECT_CONN_ID, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.conn_id = conn_id

        def execute(self, context):
            from datacloud.pipelines.flights import task_errors
            from datacloud.pipelines.ingest import reachable

            with task_errors():
                day = _day(context)
                url = connect_url(self.conn_id)
                mongo = _mongo_for_job()
                try:
                    with reachable(mongo.uri):
                        mongo.client.admin.command("ping")
                    result = run_connect(day, config.data_dir() / "landing", mongo.uri, mongo.database, url)
                    result.update(_finish(day, mongo, result))
                finally:
                    mongo.close()
                return result

    return FlightsSparkConnectOperator


def _standalone_operator_class():
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    class FlightsSparkSubmitOperator(SparkSubmitOperator):
        """spark-submit of the job file to the standalone master (client mode)."""

        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("conn_id", config.SPARK_CONN_ID)
            kwargs.setdefault("application", str(JOB_FILE))
            kwargs.setdefault("name", "flights_daily_stats")
            kwargs.setdefault(
                "conf",
                {
                    "spark.sql.session.timeZone": "UTC",
                    "spark.ui.showConsoleProgress": "false",
                    "spark.driver.extraJavaOptions": JVM_OPTIONS,
                    "spark.executor.extraJavaOptions": JVM_OPTIONS,
                },
            )
            kwargs.setdefault("executor_memory", "1g")
            kwargs.setdefault("driver_memory", "1g")
            kwargs.setdefault("total_executor_cores", 2)
            super().__init__(**kwargs)

        def execute(self, context):
            from datacloud.pipelines.flights import task_errors

            with task_errors():
                day = _day(context)
                mongo = _mongo_for_job()
                try:
                    self.application_args = job_arguments(day, str(config.data_dir() / "landing"), mongo.database)
                    self.jars = connector_jars()
                    self.env_vars = {
                        **(self.env_vars or {}),
                        "DATACLOUD_MONGO_URI": mongo.uri,
                        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
                        "PYSPARK_PYTHON": sys.executable,
                    }
                    # spark-submit comes with pyspark, next to this interpreter.
                    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
                    started = time.monotonic()
                    super().execute(context)
                    log.info("Spark | standalone job for %s took %.1fs (submit to exit)", day, time.monotonic() - started)
                    return _finish(day, mongo)
                finally:
                    mongo.close()

    return FlightsSparkSubmitOperator


def _kubernetes_operator_class():
    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

    class FlightsSparkKubernetesOperator(SparkKubernetesOperator):
        """A SparkApplication per run and try, rendered from manifests/spark/; logs streamed, deleted at the end."""

        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("namespace", K8S_NAMESPACE)
            # A kubeconfig with a namespaced ServiceAccount token (spark-jobs) that may only submit and watch
            # SparkApplications; the spark stage creates the connection.
            kwargs.setdefault("kubernetes_conn_id", config.SPARK_SUBMIT_CONN_ID)
            kwargs.setdefault("get_logs", True)
            kwargs.setdefault("delete_on_termination", True)
            kwargs.setdefault("random_name_suffix", False)  # the name is already unique per run and try
            kwargs.setdefault("template_spec", {"placeholder": True})  # replaced at run time in execute()
            super().__init__(**kwargs)

        def execute(self, context):
            from datacloud.pipelines.flights import task_errors

            with task_errors():
                day = _day(context)
                ti = context["ti"]
                name = application_name(ti.dag_id, context["run_id"], ti.try_number, day)
                mongo = _mongo_for_job()
                landing = None
                try:
                    image = recorded_spark_image()
                    data = landing_configmap_data(config.data_dir() / "landing", day)
                    self._ensure_job_configmap()
                    landing = self._create_landing_configmap(name, day, data)
                    app = render_application(
                        name=name, day=day, database=mongo.database, namespace=self.namespace, image=image, cpu=recorded_job_cpu()
                    )
                    self.template_spec = {"spark": app}
                    self.name = name
                    log.info("Spark | submitting SparkApplication %s/%s for %s", self.namespace, name, day)
                    super().execute(context)
                    return _finish(day, mongo)
                finally:
                    if landing:
                        self._delete_landing_configmap(landing)
                    mongo.close()

        def _create_landing_configmap(self, name: str, day: str, data: dict[str, str]) -> str:
            """The day's landing files for this application (replaced if a killed try of the same name left one)."""
            from kubernetes.client import V1ConfigMap, V1ObjectMeta
            from kubernetes.client.exceptions import ApiException

            cm = landing_configmap_name(name)
            labels = {"app.kubernetes.io/part-of": "datacloud", "datacloud/job": "flights-landing", "datacloud/date": day}
            body = V1ConfigMap(metadata=V1ObjectMeta(name=cm, namespace=self.namespace, labels=labels), data=data)
            try:
                self.client.create_namespaced_config_map(self.namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.client.replace_namespaced_config_map(cm, self.namespace, body)
            log.info("Spark | ConfigMap %s/%s holds the landing files of %s (%s)", self.namespace, cm, day, ", ".join(data))
            return cm

        def _delete_landing_configmap(self, cm: str) -> None:
            from kubernetes.client.exceptions import ApiException

            try:
                self.client.delete_namespaced_config_map(cm, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("Spark | ConfigMap %s/%s not deleted (%s); delete it by hand", self.namespace, cm, exc.reason)

        def _ensure_job_configmap(self) -> None:
            """Create the ConfigMap with the job file unless this version of it exists."""
            from kubernetes.client import V1ConfigMap, V1ObjectMeta
            from kubernetes.client.exceptions import ApiException

            body = V1ConfigMap(
                metadata=V1ObjectMeta(
                    name=job_configmap_name(),
                    namespace=self.namespace,
                    labels={"app.kubernetes.io/part-of": "datacloud", "datacloud/job": "flights"},
                ),
                data={JOB_FILE.name: JOB_FILE.read_text()},
            )
            try:
                self.client.create_namespaced_config_map(self.namespace, body)
                log.info("Spark | created ConfigMap %s/%s with the job file", self.namespace, body.metadata.name)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                log.info("Spark | ConfigMap %s/%s unchanged", self.namespace, body.metadata.name)

    return FlightsSparkKubernetesOperator
