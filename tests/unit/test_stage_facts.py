"""What the pipelines' kubernetes target takes from the platform state: the image the spark stage deployed and
the CPU of its drivers and executors (recorded from the stage's last step), and the job's MongoDB URI options."""

from __future__ import annotations

import pytest

from datacloud import spark as flights_spark
from datacloud.errors import UserError
from datacloud.stages import spark
from tests.unit.apps_fixtures import REPO_ROOT, inventories


@pytest.fixture
def state(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    monkeypatch.setenv("DATACLOUD_PLATFORM_STATE", str(path))
    return path


def test_the_spark_stages_verify_result_records_the_image_and_job_cpu_the_kubernetes_target_uses(state) -> None:
    """The listener records the scalar facts of a stage's last step (platform_state.record_from_task)."""
    from datacloud import platform_state

    inv = inventories()["reference"]
    params = {"inventory": str(REPO_ROOT / "inventory.example.yaml")}
    with pytest.raises(UserError, match="the spark stage has recorded no Spark image"):
        flights_spark.recorded_spark_image()
    result = {"changes": [], "dry_run": False, "verified": True, "image": spark.image(inv), **spark.job_cpu(inv)}
    uris = ["datacloud://platform/spark"]
    assert (
        platform_state.record_from_task(
            dag_id="provision_platform", outlet_uris=uris, params={**params, "dry_run": True}, result=result
        )
        is None
    )
    assert not state.exists()  # a dry run records nothing
    assert platform_state.record_from_task(dag_id="provision_platform", outlet_uris=uris, params=params, result=result) == "spark"
    assert flights_spark.recorded_spark_image() == spark.image(inv)
    sp = inv.components.spark
    assert flights_spark.recorded_job_cpu() == {"driver": f"{sp.driver.cpu_m}m", "executor": f"{sp.executor.cpu_m}m"}


def test_the_flights_application_requests_the_recorded_cpu(state) -> None:
    app = flights_spark.render_application(
        name="etl-flights-daily-20130102-abc-t1",
        day="2013-01-02",
        database="datacloud",
        cpu={"driver": "100m", "executor": "150m"},
    )
    assert (app["spec"]["driver"]["coreRequest"], app["spec"]["executor"]["coreRequest"]) == ("100m", "150m")
    default = flights_spark.recorded_job_cpu()  # nothing recorded: the pipeline's own defaults
    assert default == {"driver": "500m", "executor": "1000m"}


def test_the_jobs_uri_keeps_the_connections_options() -> None:
    """The MongoDB hook leaves the connection's extras out of its URI; a Spark job gets only the URI."""
    from datacloud.pipelines.ingest import with_options

    uri = "mongodb://datacloud:p%40ss@127.0.0.1:27017/datacloud"
    assert with_options(uri, {"authSource": "admin", "serverSelectionTimeoutMS": 10000, "tls": False}) == (
        uri + "?authSource=admin&serverSelectionTimeoutMS=10000&tls=false"
    )
    assert with_options(uri, {}) == uri
    assert with_options(uri + "?appname=x", {"authSource": "admin"}) == uri + "?appname=x&authSource=admin"
