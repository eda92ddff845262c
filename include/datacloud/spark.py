"""One PySpark job, three targets: ``local`` (default), ``standalone``, ``kubernetes``.

The target comes from ``DATACLOUD_SPARK_TARGET`` when the DAG file is parsed
(an environment setting, no I/O); ``transform_operator()`` returns the task:

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

import hashlib
import importlib.util
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from datacloud import config
from datacloud.errors import UserError

log = logging.getLogger(__name__)

TARGETS = ("local", "standalone", "kubernetes")
JOB_FILE = config.JOBS_DIR / "flights_daily_stats.py"
TEMPLATE = "spark/sparkapplication-flights.yaml.j2"
K8S_NAMESPACE = "spark-jobs"  # where the spark stage lets drivers run (ServiceAccount spark)
K8S_JOB_MOUNT = "/opt/datacloud/jobs"
K8S_LANDING_MOUNT = "/data/landing"
K8S_LANDING_CLAIM = "datacloud-landing"  # CephFS (RWX) claim shared with the Airflow workers
K8S_MONGO_SECRET = "datacloud-mongo-spark"  # noqa: S105 - a Secret name, not a value; key "uri": the connection string for Spark jobs
# Short jobs on a cold JVM: C1-only JIT and the serial GC start faster and use less CPU
# (one day locally: JVM start 19 -> 10 s and first run 35 -> 16 s on a busy 2-core machine).
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


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


def render_application(
    *, name: str, day: str, database: str, namespace: str = K8S_NAMESPACE, image: str | None = None
) -> dict[str, Any]:
    """The SparkApplication for one run (pure: the render test checks it against our schema).

    ``image``: the Spark image to run (the task passes :func:`recorded_spark_image`); by
    default the repository-relative pin, for rendering only.
    """
    from datacloud.images import own_image, pull_policy
    from datacloud.render import render_template

    image = image or own_image(None, "spark")
    (app,) = render_template(
        TEMPLATE,
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
        landing_claim=K8S_LANDING_CLAIM,
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


def _finish(day: str, mongo) -> dict[str, Any]:
    from datacloud.pipelines import flights
    from datacloud.pipelines.ingest import reachable

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
                    result.update(_finish(day, mongo))
                finally:
                    mongo.close()
                return result

    return FlightsSparkLocalOperator


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
            kwargs.setdefault("kubernetes_conn_id", config.KUBE_CONN_ID)
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
                try:
                    image = recorded_spark_image()
                    self._ensure_job_configmap()
                    app = render_application(name=name, day=day, database=mongo.database, namespace=self.namespace, image=image)
                    self.template_spec = {"spark": app}
                    self.name = name
                    log.info("Spark | submitting SparkApplication %s/%s for %s", self.namespace, name, day)
                    super().execute(context)
                    return _finish(day, mongo)
                finally:
                    mongo.close()

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
