"""The flights SparkApplication: rendered from manifests/spark/, checked against the spark-operator chart's CRD
and the platform's rules for it (pinned image, credentials only from Secrets)."""

from __future__ import annotations

import copy

import pytest

from datacloud import spark
from datacloud.render import versions
from tests.helpers.kube_schema import crd_schema, validate_object

KUBE = "1.34.2"


IMAGE = "registry.example.internal:5000/datacloud/" + versions()["spark"]["image"]
DIGEST = "sha256:" + "ab" * 32


def rendered(try_number: int = 1, run_id: str = "backfill__2013-01-01T00:00:00+00:00", image: str = IMAGE):
    name = spark.application_name("etl_flights_daily", run_id, try_number, "2013-01-01")
    return spark.render_application(name=name, day="2013-01-01", database="datacloud", image=image)


def policy_problems(app: dict) -> list[str]:
    """What the platform forbids in a SparkApplication beyond its CRD."""
    problems = []
    image = app["spec"]["image"]
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        problems.append(f"spec/image {image} is not pinned to a version tag")
    for role in ("driver", "executor"):
        for env in app["spec"][role].get("env", []):
            if "://" in str(env.get("value", "")) and "@" in str(env.get("value", "")):
                problems.append(f"spec/{role}/env {env['name']} holds a URI with credentials instead of a secretKeyRef")
    return problems


def test_application_matches_the_chart_crd_and_our_rules():
    app = rendered()
    assert crd_schema("SparkApplication", app["apiVersion"]) is not None
    validate_object(app, KUBE)
    assert policy_problems(app) == []


def test_crd_and_rules_catch_what_we_could_get_wrong():
    app = rendered()
    typo = copy.deepcopy(app)
    typo["spec"]["driver"]["serviceAcount"] = "spark"
    with pytest.raises(AssertionError, match="serviceAcount"):
        validate_object(typo, KUBE)
    wrong_type = copy.deepcopy(app)
    wrong_type["spec"]["executor"]["instances"] = "two"
    with pytest.raises(AssertionError, match="spec/executor/instances"):
        validate_object(wrong_type, KUBE)
    latest = copy.deepcopy(app)
    latest["spec"]["image"] = "datacloud/spark:latest"
    assert policy_problems(latest) == ["spec/image datacloud/spark:latest is not pinned to a version tag"]
    plain_secret = copy.deepcopy(app)
    plain_secret["spec"]["driver"]["env"][0] = {"name": "DATACLOUD_MONGO_URI", "value": "mongodb://user:pw@host"}
    assert [p.split(" holds")[0] for p in policy_problems(plain_secret)] == ["spec/driver/env DATACLOUD_MONGO_URI"]


def test_pinned_image_connector_and_job_inputs():
    app = rendered()
    spec = app["spec"]
    assert spec["image"] == IMAGE
    assert spec["imagePullPolicy"] == "Always"  # a tag alone may be pushed again
    assert spec["sparkVersion"] == versions()["local"]["spark"]
    assert f"mongo{versions()['local']['mongo_spark_connector']}" in spec["image"]
    connector = versions()["local"]["mongo_spark_connector"]
    assert app["metadata"]["annotations"]["datacloud/mongo-spark-connector"].endswith(":" + connector)
    assert spec["mainApplicationFile"] == f"local://{spark.K8S_JOB_MOUNT}/flights_daily_stats.py"
    assert spec["arguments"] == ["--date", "2013-01-01", "--landing", spark.K8S_LANDING_MOUNT, "--database", "datacloud"]
    assert spec["driver"]["serviceAccount"] == "spark"
    assert app["metadata"]["namespace"] == "spark-jobs"
    for role in ("driver", "executor"):
        env = {e["name"]: e for e in spec[role]["env"]}
        assert env["DATACLOUD_MONGO_URI"]["valueFrom"]["secretKeyRef"] == {"name": spark.K8S_MONGO_SECRET, "key": "uri"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["job"]["configMap"]["name"] == spark.job_configmap_name()
    # the day's weather and airlines at the paths the job reads (--landing ROOT/flights/date=D/...), one file each
    assert volumes["landing"]["configMap"] == {"name": f"{app['metadata']['name']}-landing"}
    for role in ("driver", "executor"):
        mounts = [m for m in spec[role]["volumeMounts"] if m["name"] == "landing"]
        assert mounts == [
            {"name": "landing", "mountPath": f"/data/landing/flights/date=2013-01-01/{f}", "subPath": f, "readOnly": True}
            for f in ("weather.jsonl", "airlines.jsonl")
        ]


def test_the_landing_configmap_carries_the_days_reference_files_and_refuses_what_cannot_fit(tmp_path):
    from datacloud.errors import UserError

    day = tmp_path / "flights" / "date=2013-01-01"
    day.mkdir(parents=True)
    with pytest.raises(UserError, match=r"weather\.jsonl is missing; run the land task for 2013-01-01 first"):
        spark.landing_configmap_data(tmp_path, "2013-01-01")
    (day / "weather.jsonl").write_text('{"origin": "EWR"}\n')
    (day / "airlines.jsonl").write_text('{"carrier": "UA"}\n')
    (day / "flights.jsonl").write_text("x" * (spark.K8S_LANDING_MAX_BYTES + 1))  # read from MongoDB, never carried
    assert spark.landing_configmap_data(tmp_path, "2013-01-01") == {
        "weather.jsonl": '{"origin": "EWR"}\n',
        "airlines.jsonl": '{"carrier": "UA"}\n',
    }
    (day / "weather.jsonl").write_text("y" * spark.K8S_LANDING_MAX_BYTES)
    with pytest.raises(UserError, match="more than 900 KiB, more than a ConfigMap can carry"):
        spark.landing_configmap_data(tmp_path, "2013-01-01")


def test_names_are_unique_per_run_and_try_and_fit_kubernetes():
    names = {
        spark.application_name("etl_flights_daily", run_id, try_number, "2013-01-01")
        for run_id in ("backfill__2013-01-01T00:00:00+00:00", "manual__2013-01-01T00:00:00+00:00")
        for try_number in (1, 2, 3)
    }
    assert len(names) == 6
    for name in names:
        assert len(name) <= 53
        assert name.startswith("etl-flights-daily-20130101-")
    assert spark.application_name("etl_flights_daily", "r", 2, "2013-01-01") == spark.application_name(
        "etl_flights_daily", "r", 2, "2013-01-01"
    )


def test_target_comes_from_the_environment(monkeypatch):
    from datacloud.errors import UserError

    monkeypatch.delenv("DATACLOUD_SPARK_TARGET", raising=False)
    assert spark.target() == "local"
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", "Kubernetes")
    assert spark.target() == "kubernetes"
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", "yarn")
    with pytest.raises(UserError, match="must be one of local, connect, standalone, kubernetes"):
        spark.target()
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", "connect")
    assert spark.target() == "connect"


@pytest.mark.parametrize("kind", ["local", "connect", "standalone", "kubernetes"])
def test_each_target_builds_its_operator(monkeypatch, kind):
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", kind)
    op = spark.transform_operator(task_id="transform")
    expected = {
        "local": "FlightsSparkLocalOperator",
        "connect": "FlightsSparkConnectOperator",
        "standalone": "FlightsSparkSubmitOperator",
        "kubernetes": "FlightsSparkKubernetesOperator",
    }[kind]
    assert type(op).__name__ == expected
    if kind == "local":
        assert op.max_active_tis_per_dag == 1  # one JVM at a time on a small machine
    if kind == "connect":
        assert op.conn_id == "datacloud_spark_connect"
        assert op.max_active_tis_per_dag == 2  # the Connect server's slots (local[2])
        assert op.execution_timeout.total_seconds() == spark.CONNECT_TASK_TIMEOUT
    if kind == "kubernetes":
        assert (op.get_logs, op.delete_on_termination, op.random_name_suffix) == (True, True, False)
        assert op.namespace == "spark-jobs"
        # the namespaced submit-only token, not the cluster's admin kubeconfig
        assert op.kubernetes_conn_id == "datacloud_kubernetes_spark"
    if kind == "standalone":
        assert op._conn_id == "datacloud_spark"
        assert op.application.endswith("include/jobs/flights_daily_stats.py")


def test_a_digest_pinned_image_passes_through_and_is_pulled_if_not_present():
    spec = rendered(image=f"{IMAGE}@{DIGEST}")["spec"]
    assert spec["image"] == f"{IMAGE}@{DIGEST}"
    assert spec["imagePullPolicy"] == "IfNotPresent"


def test_connect_sizing_comes_from_the_environment(monkeypatch):
    from datacloud.errors import UserError

    monkeypatch.delenv("DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS", raising=False)
    monkeypatch.delenv("DATACLOUD_SPARK_CONNECT_SLOTS", raising=False)
    monkeypatch.setenv("DATACLOUD_SPARK_TARGET", "connect")
    assert spark.connect_slots() == 2
    assert spark.max_active_runs() == 6  # three days per Connect slot
    monkeypatch.setenv("DATACLOUD_SPARK_CONNECT_SLOTS", "3")
    assert spark.max_active_runs() == 9
    assert spark.max_active_runs("local") == 3  # the pipeline's own default on the other targets
    monkeypatch.setenv("DATACLOUD_FLIGHTS_MAX_ACTIVE_RUNS", "4")
    assert spark.max_active_runs() == 4  # an explicit setting wins
    monkeypatch.setenv("DATACLOUD_SPARK_CONNECT_SLOTS", "0")
    with pytest.raises(UserError, match="DATACLOUD_SPARK_CONNECT_SLOTS must be a whole number >= 1"):
        spark.connect_slots()


def test_connect_url_comes_from_the_providers_connection(monkeypatch):
    import json

    from datacloud.errors import UserError

    conn = {"conn_type": "spark_connect", "host": "sc://127.0.0.1", "port": 15099}
    monkeypatch.setenv("AIRFLOW_CONN_DATACLOUD_SPARK_CONNECT", json.dumps(conn))
    assert spark.connect_url() == "sc://127.0.0.1:15099/"
    monkeypatch.delenv("AIRFLOW_CONN_DATACLOUD_SPARK_CONNECT")
    with pytest.raises(UserError, match="the connection datacloud_spark_connect is not defined; create it"):
        spark.connect_url()


def test_a_lost_connect_server_is_recognised_and_other_errors_are_not():
    class RpcDouble(Exception):
        """Stands in for grpc's finished-RPC error: code() and details()."""

        def code(self):
            import grpc

            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "failed to connect to all addresses"

    try:
        try:
            raise RpcDouble("<_MultiThreadedRendezvous of RPC that terminated with ...>")
        except RpcDouble as inner:
            raise RuntimeError("<_MultiThreadedRendezvous of RPC ...>") from inner
    except RuntimeError as outer:
        lost = outer
    assert spark.connect_lost(lost)
    assert spark._reason(lost) == "gRPC UNAVAILABLE: failed to connect to all addresses"
    assert spark.connect_lost(
        RuntimeError("[INVALID_HANDLE.SESSION_CHANGED] The existing Spark server driver instance has restarted.")
    )
    assert not spark.connect_lost(ValueError("[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column `carier` cannot be resolved."))
