"""Generated MongoDB secrets: strong, fresh each time, and shaped as the operator expects."""

from __future__ import annotations

import base64
import re

from datacloud.stages import mongo
from tests.helpers import datalayer_inventories as inventories


def test_every_secret_the_cluster_references_is_generated():
    generated = mongo.generate_secrets()
    rendered = next(o for o in mongo.render(inventories.reference()).all_objects() if o["kind"] == "PerconaServerMongoDB")
    referenced = {rendered["spec"]["secrets"]["users"], rendered["spec"]["secrets"]["keyFile"]}
    referenced |= {u["passwordSecretRef"]["name"] for u in rendered["spec"]["users"]}
    assert referenced == set(generated)
    for user in rendered["spec"]["users"]:
        assert user["passwordSecretRef"]["key"] in generated[user["passwordSecretRef"]["name"]]
    users = generated[mongo.USERS_SECRET]
    for prefix in mongo.SYSTEM_USERS:
        assert users[f"{prefix}_USER"]
        assert len(users[f"{prefix}_PASSWORD"]) >= 32


def test_values_are_fresh_and_strong():
    a, b = mongo.generate_secrets(), mongo.generate_secrets()
    passwords = [
        v for s in (a, b) for k, v in ((k, v) for d in s.values() for k, v in d.items()) if "PASSWORD" in k or k == "password"
    ]
    assert len(set(passwords)) == len(passwords)
    for pw in passwords:
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", pw)
    keyfile = a[mongo.KEYFILE_SECRET][mongo.KEYFILE_KEY]
    assert 6 <= len(keyfile) <= 1024
    assert re.fullmatch(r"[A-Za-z0-9+/=]+", keyfile)  # MongoDB accepts only base64 characters
    assert len(base64.b64decode(keyfile)) == 756
    assert keyfile != b[mongo.KEYFILE_SECRET][mongo.KEYFILE_KEY]


def test_secret_manifest_and_connection():
    manifest = mongo.secret_manifest("x", {"password": "s3"})
    assert manifest["metadata"] == {"name": "x", "namespace": "mongo", "labels": {"app.kubernetes.io/part-of": "datacloud"}}
    assert manifest["stringData"] == {"password": "s3"}
    inv = inventories.reference()
    conn = mongo.airflow_connection(inv, "p@ss/word")
    assert conn["host"] == "datacloud-mongo-mongos.mongo.svc.cluster.local"
    assert (conn["port"], conn["login"], conn["schema"], conn["extra"]) == (
        27017,
        "datacloud",
        "datacloud",
        {"authSource": "admin"},
    )
    uri = mongo.app_uri(inv, "p@ss/word")
    assert (
        uri == "mongodb://datacloud:p%40ss%2Fword@datacloud-mongo-mongos.mongo.svc.cluster.local:27017/datacloud?authSource=admin"
    )
