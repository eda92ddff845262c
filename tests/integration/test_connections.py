"""Stages write connections through the Airflow REST API (task code has no DB access in Airflow 3)."""

from __future__ import annotations

import json

import pytest

from datacloud import connections


def test_put_replace_delete_through_the_api(airflow_stack, airflow_api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DATACLOUD_AIRFLOW_API", airflow_stack.env()["AIRFLOW_CONN_DATACLOUD_AIRFLOW_API"])
    connections.put("datacloud_probe", "kubernetes", description="probe", extra={"kube_config": "apiVersion: v1"})
    got = airflow_api._request("GET", "/api/v2/connections/datacloud_probe")
    assert got["conn_type"] == "kubernetes" and json.loads(got["extra"]) == {"kube_config": "apiVersion: v1"}

    connections.put("datacloud_probe", "mongo", host="mongos.mongo.svc", port=27017, login="datacloud", password="s3cret-x", schema="datacloud")
    got = airflow_api._request("GET", "/api/v2/connections/datacloud_probe")
    assert (got["conn_type"], got["host"], got["port"], got["login"], got["schema"]) == ("mongo", "mongos.mongo.svc", 27017, "datacloud", "datacloud")

    assert connections.delete("datacloud_probe") is True
    assert connections.delete("datacloud_probe") is False


def test_without_the_api_connection_the_db_path_says_what_to_create(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "_api", lambda: None)  # no datacloud_airflow_api connection
    # a task process in Airflow 3: the DB URL is not usable
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    with pytest.raises(Exception, match="create the connection datacloud_airflow_api"):
        connections.put("datacloud_probe", "kubernetes", extra={})

