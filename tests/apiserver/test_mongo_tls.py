"""The real API server (with the pinned psmdb CRDs) stores the MongoDB cluster object with TLS
between members as rendered: nothing pruned, no unsafe flag that turns TLS off (issue 12, item 8).
mongod itself cannot run here; what the operator does with it is its documented behaviour."""

from __future__ import annotations

import copy
import json

from tests.apiserver.platform import apply, stage_renders


def test_the_cluster_object_keeps_tls_between_members(apiserver, crds, namespaces):
    (rendered,) = [o for o in stage_renders("reference")["mongo"].all_objects() if o["kind"] == "PerconaServerMongoDB"]
    psmdb = copy.deepcopy(rendered)
    # an object of its own, without the operator's finalizer (no operator here to remove it)
    psmdb["metadata"] = {**psmdb["metadata"], "name": "tls-check", "finalizers": []}
    res = apply(apiserver, [psmdb], dry_run=False)
    assert res.returncode == 0, res.stderr
    try:
        got = json.loads(
            apiserver.kubectl(
                "get", "perconaservermongodb", psmdb["metadata"]["name"], "--namespace", "mongo", "-o", "json"
            ).stdout
        )
        assert got["spec"]["tls"] == {"mode": "preferTLS"}
        assert "tls" not in got["spec"]["unsafeFlags"]
        assert got["spec"]["sharding"]["mongos"]["expose"] == {"type": "ClusterIP"}  # never a NodePort
    finally:
        apiserver.kubectl("delete", "perconaservermongodb", psmdb["metadata"]["name"], "--namespace", "mongo", "--wait=false")
