"""Our own images come from the installation's registry, pinnable by digest; image pins are well formed
(issue 12, item 3)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from datacloud import images, render
from datacloud import platform_state as ps
from datacloud import spark as flights_spark
from datacloud.errors import InventoryError, UserError
from datacloud.inventory import parse_inventory
from datacloud.render import Release, Rendered, render_stage, versions
from datacloud.stages import preflight
from datacloud.stages import spark as spark_stage

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "registry.example.internal:5000/datacloud"
DIGEST = "sha256:" + "0123456789abcdef" * 4
SPARK_TAGGED = f"{REGISTRY}/{versions()['spark']['image']}"


def _inv(**image_settings: Any):
    data = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())
    data["images"] = image_settings
    return parse_inventory(data)


def _images_of(rendered: Rendered) -> list[tuple[str, str]]:
    """(image, pull policy) of every container and SparkApplication in the rendered objects."""
    out = []
    for obj in rendered.all_objects():
        spec = obj.get("spec") or {}
        if obj["kind"] == "SparkApplication":
            out.append((spec["image"], spec["imagePullPolicy"]))
        if obj["kind"] == "ScheduledSparkApplication":
            out.append((spec["template"]["image"], spec["template"]["imagePullPolicy"]))
        pod = ((spec.get("template") or {}).get("spec")) or {}
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            out.append((c["image"], c.get("imagePullPolicy")))
    return out


def test_the_spark_stage_pulls_our_image_from_the_inventory_registry_always_without_a_digest() -> None:
    inv = _inv(registry=REGISTRY)
    found = _images_of(render_stage("spark", inv)) + _images_of(Rendered({"smoke": spark_stage.render_smoke(inv, "v")}))
    assert len(found) == 4  # History Server + its init container, the scheduled example, the verify run
    assert set(found) == {(SPARK_TAGGED, "Always")}


def test_a_digest_pins_our_image_and_makes_if_not_present_safe() -> None:
    inv = _inv(registry=REGISTRY, spark_digest=DIGEST)
    found = _images_of(render_stage("spark", inv)) + _images_of(Rendered({"smoke": spark_stage.render_smoke(inv, "v")}))
    assert set(found) == {(f"{SPARK_TAGGED}@{DIGEST}", "IfNotPresent")}
    assert spark_stage.image(inv) == f"{SPARK_TAGGED}@{DIGEST}"


def test_chart_style_images_keep_the_digest_in_the_tag() -> None:
    name, tag = images.name_and_tag(f"{REGISTRY}/jupyter-spark:4.2.0-py3.11@{DIGEST}")
    assert (name, tag) == (f"{REGISTRY}/jupyter-spark", f"4.2.0-py3.11@{DIGEST}")
    assert images.name_and_tag(f"{REGISTRY}/jupyter-spark:4.2.0-py3.11") == (f"{REGISTRY}/jupyter-spark", "4.2.0-py3.11")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"registry": "datacloud"},
            "images.registry: 'datacloud' is not a registry-qualified repository like "
            "registry.example.internal:5000/datacloud (it would resolve on Docker Hub); fix it.",
        ),
        (
            {"registry": REGISTRY, "spark_digest": "sha256:abc"},
            "images.spark_digest: 'sha256:abc' is not an image digest like sha256:<64 hex digits>; fix it.",
        ),
        (
            {"registry": REGISTRY, "jupyter_digest": "md5:" + "a" * 32},
            f"images.jupyter_digest: {'md5:' + 'a' * 32!r} is not an image digest like sha256:<64 hex digits>; fix it.",
        ),
    ],
    ids=["unqualified", "short_digest", "other_algorithm"],
)
def test_the_inventory_refuses_an_unqualified_registry_or_a_malformed_digest(settings, message) -> None:
    with pytest.raises(InventoryError) as err:
        _inv(**settings)
    assert str(err.value) == message


def _preflight(inv, stages, monkeypatch) -> None:
    monkeypatch.setattr(preflight, "problems", lambda inv, facts: [])
    monkeypatch.setattr(preflight, "table", lambda inv, facts: "")
    preflight.check(SimpleNamespace(inv=inv, dry_run=True, params=SimpleNamespace(stages=tuple(stages))), [])


def test_preflight_refuses_our_images_without_a_registry_in_one_sentence(monkeypatch) -> None:
    with pytest.raises(preflight.PreflightError) as err:
        _preflight(_inv(), ["preflight", "spark"], monkeypatch)
    assert str(err.value) == (
        f"images.registry is not set, so the images we build ({versions()['spark']['image']}) would be pulled from "
        "Docker Hub; push them to your registry and set images.registry to it, like registry.example.internal:5000/datacloud."
    )
    _preflight(_inv(), ["preflight", "kubernetes", "network"], monkeypatch)  # no stage that runs our images
    _preflight(_inv(registry=REGISTRY), ["preflight", "spark"], monkeypatch)


def test_preflight_refuses_a_stage_that_renders_our_image_without_the_registry(monkeypatch) -> None:
    jupyter_ref = str(versions()["jupyter"]["image"])
    name, tag = jupyter_ref.split(":")
    values = {"singleuser": {"image": {"name": name, "tag": tag}, "extraEnv": {"SPARK_EXECUTOR_IMAGE": SPARK_TAGGED}}}
    fake = Rendered(releases=[Release("jupyterhub", "jupyter", "jupyterhub", "https://charts.example", "1", values)])
    monkeypatch.setattr(render, "render_stage", lambda stage, inv: fake)
    with pytest.raises(preflight.PreflightError) as err:
        _preflight(_inv(registry=REGISTRY), ["preflight", "jupyter"], monkeypatch)
    assert str(err.value) == (
        f"the jupyter stage renders {jupyter_ref} without a registry; it must pull our images from images.registry ({REGISTRY})."
    )


def test_the_spark_stage_refuses_to_apply_or_verify_without_a_registry() -> None:
    def no_cluster():
        raise AssertionError("the cluster was touched")

    ctx = SimpleNamespace(inv=_inv(), dry_run=False, kube=no_cluster)
    with pytest.raises(UserError, match=r"^images\.registry is not set"):
        spark_stage.apply(ctx)
    with pytest.raises(UserError, match=r"^images\.registry is not set"):
        spark_stage.verify(ctx)


def test_the_flights_kubernetes_target_runs_the_image_the_spark_stage_recorded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATACLOUD_PLATFORM_STATE", str(tmp_path / "state.json"))
    with pytest.raises(UserError, match=r"^the spark stage has recorded no Spark image"):
        flights_spark.recorded_spark_image()
    ps.record_stage("spark", facts={"image": "spark:4.2.0"})
    with pytest.raises(UserError, match=r"names no registry"):
        flights_spark.recorded_spark_image()
    # what the listener records from the spark stage's last step (verify)
    result = {"changes": [], "dry_run": False, "verified": True, "image": f"{SPARK_TAGGED}@{DIGEST}"}
    ps.record_stage("spark", facts=ps._simple_facts(result))
    assert flights_spark.recorded_spark_image() == f"{SPARK_TAGGED}@{DIGEST}"


# --- pins in manifests/versions.yaml ---


def test_the_shipped_pins_are_well_formed() -> None:
    assert images.pin_problems() == []


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("busybox:1.37.0@sha256:abc", "has a malformed digest"),
        ("busybox:1.37.0@sha256:" + "A" * 64, "has a malformed digest"),
        ("busybox:1.37.0@md5:" + "a" * 32, "has a malformed digest"),
        ("busybox:1.37.0@", "has a malformed digest"),
        ("busybox", "is not an image pinned to a version tag"),
        ("busybox:latest", "is not an image pinned to a version tag"),
        ("Busybox:1.37.0", "is not an image pinned to a version tag"),
    ],
)
def test_a_malformed_pin_is_refused(ref: str, problem: str) -> None:
    pins = copy.deepcopy(versions())
    pins["storage"]["local_path_helper_image"] = ref
    assert images.pin_problems(pins) == [
        f"manifests/versions.yaml storage.local_path_helper_image {ref!r} {problem}"
        + ("; write repo:tag@sha256:<64 hex digits>." if "digest" in problem else " (repo:tag).")
    ]


def test_our_own_pins_are_name_and_tag_only() -> None:
    pins = copy.deepcopy(versions())
    pins["spark"]["image"] = "docker.io/datacloud/spark:4.2.0"
    pins["jupyter"]["image"] = f"jupyter-spark:4.2.0@{DIGEST}"
    assert [p.split(" must")[0] for p in images.pin_problems(pins)] == [
        "manifests/versions.yaml spark.image 'docker.io/datacloud/spark:4.2.0'",
        f"manifests/versions.yaml jupyter.image 'jupyter-spark:4.2.0@{DIGEST}'",
    ]


def test_a_digest_pinned_third_party_image_renders_unchanged(monkeypatch) -> None:
    pinned = copy.deepcopy(versions())
    ceph = f"{pinned['storage']['ceph_image']}@{DIGEST}"
    helper = f"{pinned['storage']['local_path_helper_image']}@{DIGEST}"
    pinned["storage"]["ceph_image"], pinned["storage"]["local_path_helper_image"] = ceph, helper
    monkeypatch.setattr(render, "versions", lambda: pinned)
    assert images.pin_problems(pinned) == []
    data = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())
    data["nodes"] = data["nodes"][:1]  # one Ceph disk: local-path, which uses the helper image
    data["components"] = {"mongo": {"shards": 1, "replicas": 1, "config_replicas": 1, "mongos": 1}}
    small = parse_inventory(data)
    refs = [s for o in render_stage("storage", small).all_objects() for s in images._strings(o)]
    assert any(f"image: {helper}\n" in s for s in refs)  # inside the helperPod.yaml of a ConfigMap
    cluster = [o for o in render_stage("storage", _inv(registry=REGISTRY)).all_objects() if o["kind"] == "CephCluster"]
    assert cluster[0]["spec"]["cephVersion"]["image"] == ceph
