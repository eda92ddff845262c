"""Our own images: where they come from, how they are pinned, and that the Spark and Jupyter ones agree.

Images we build (manifests/images/*) are pulled from the installation's registry
(inventory ``images.registry``), never from a Docker Hub account: :func:`own_image` gives
``<registry>/<name>:<tag>[@sha256:...]`` and :func:`pull_policy` ``IfNotPresent`` for a
digest, ``Always`` for a tag alone (a tag can be pushed again). :func:`pin_problems`
checks every image pin in manifests/versions.yaml (a tag, an optional well-formed
digest); :func:`unqualified_own_images` finds a rendered reference to our images that
names no registry. Preflight refuses both.

The Spark and Jupyter images must agree: preflight refuses a mismatch.

A notebook's driver (Jupyter image) and its executors (Spark image) exchange
pickled Python functions and Arrow batches, so Python, Spark (with its Scala and
Java), the connector jars and pandas/numpy/pyarrow must be the same on both
sides. The versions live as ``ARG`` defaults in manifests/images/*/Dockerfile;
:func:`check_versions` compares them (and Spark with manifests/versions.yaml) and
raises :class:`ImageVersionError` naming every difference.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from datacloud.config import MANIFESTS_DIR
from datacloud.errors import UserError

log = logging.getLogger(__name__)

IMAGES_DIR = MANIFESTS_DIR / "images"
# ARG name -> what to call it in a message
SHARED = {
    "PYTHON_VERSION": "Python",
    "SPARK_VERSION": "Spark",
    "SCALA_BINARY": "Scala",
    "JAVA_VERSION": "Java",
    "MONGO_SPARK_CONNECTOR": "MongoDB Spark connector",
    "NUMPY_VERSION": "numpy",
    "PANDAS_VERSION": "pandas",
    "PYARROW_VERSION": "pyarrow",
}
_ARG = re.compile(r"^\s*ARG\s+([A-Z0-9_]+)=(\S+)\s*$", re.M)


class ImageVersionError(UserError):
    """The Spark and Jupyter image definitions disagree."""


# versions.yaml sections whose ``image`` we build, and the inventory field of each one's digest
OWN_IMAGES = {"spark": "spark_digest", "jupyter": "jupyter_digest"}
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?P<name>(?:[a-zA-Z0-9.-]+(?::[0-9]{{1,5}})?/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>.*))?$"
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def split_reference(ref: str) -> tuple[str, str, str]:
    """(name, tag, digest) of ``name[:tag][@digest]``; "" for a part that is absent."""
    body, _, digest = ref.partition("@")
    name, tag = body, ""
    if ":" in body.rsplit("/", 1)[-1]:
        name, tag = body.rsplit(":", 1)
    return name, tag, digest


def qualified(ref: str) -> bool:
    """The reference names its registry (a first part with a dot or a port, or localhost), as containerd reads it."""
    first, slash, _ = ref.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def own_image(inv, component: str) -> str:
    """``<images.registry>/<name>:<tag>[@digest]`` of an image we build (``component``: spark or jupyter).

    Without ``images.registry`` the repository-relative pin of manifests/versions.yaml
    (what ``./dev render`` shows); preflight and the stages refuse to run with it.
    """
    ref = str(versions_pins()[component]["image"])
    digest = getattr(inv.images, OWN_IMAGES[component]) if inv is not None else None
    if inv is not None and inv.images.registry:
        ref = f"{inv.images.registry}/{ref}"
    return f"{ref}@{digest}" if digest else ref


def pull_policy(ref: str) -> str:
    """IfNotPresent when a digest pins the content; Always for a tag alone, so a re-pushed tag is not stale on a node."""
    return "IfNotPresent" if split_reference(ref)[2] else "Always"


def name_and_tag(ref: str) -> tuple[str, str]:
    """For charts that take an image apart (z2jh ``singleuser.image``): the tag keeps ``@sha256:...``."""
    name, tag, digest = split_reference(ref)
    return name, f"{tag}@{digest}" if digest else tag


def registry_missing(inv, stages) -> str | None:
    """One sentence when a stage that runs our images is in the run but ``images.registry`` is not set."""
    ours = [s for s in OWN_IMAGES if s in stages]
    if not ours or inv.images.registry:
        return None
    names = ", ".join(str(versions_pins()[s]["image"]) for s in ours)
    return (
        f"images.registry is not set, so the images we build ({names}) would be pulled from Docker Hub; "
        "push them to your registry and set images.registry to it, like registry.example.internal:5000/datacloud."
    )


def pin_problems(pins: dict | None = None) -> list[str]:
    """One sentence per image pin in manifests/versions.yaml that is not ``repo:tag`` or ``repo:tag@sha256:<64 hex>``.

    Our own images are pinned by repository-relative name and tag only: the registry and
    the digest belong to the installation (inventory ``images``).
    """
    pins = versions_pins() if pins is None else pins
    out = []
    for section, values in pins.items():
        for key, value in (values or {}).items() if isinstance(values, dict) else ():
            if key != "image" and not key.endswith("_image"):
                continue
            where, ref = f"{section}.{key}", str(value)
            m = IMAGE_REFERENCE.fullmatch(ref)
            if m is None or not m["tag"] or m["tag"] == "latest":
                out.append(f"manifests/versions.yaml {where} {ref!r} is not an image pinned to a version tag (repo:tag).")
            elif m["digest"] is not None and not DIGEST.fullmatch(m["digest"]):
                out.append(
                    f"manifests/versions.yaml {where} {ref!r} has a malformed digest; write repo:tag@sha256:<64 hex digits>."
                )
            elif key == "image" and section in OWN_IMAGES and (qualified(ref) or m["digest"] is not None):
                out.append(
                    f"manifests/versions.yaml {where} {ref!r} must be a name and tag only; "
                    f"the registry is images.registry and the digest images.{OWN_IMAGES[section]} in the inventory."
                )
    return out


def _strings(value) -> list[str]:
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if isinstance(v.get("name"), str) and isinstance(v.get("tag"), str):  # a chart's {name, tag}
                out.append(f"{v['name']}:{v['tag']}")
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, str):
            out.append(v)
    return out


def unqualified_own_images(rendered) -> list[str]:
    """Every reference to one of our images in rendered objects and Helm values that names no registry."""
    wanted = {split_reference(str(versions_pins()[c]["image"]))[:2] for c in OWN_IMAGES}
    found = set()
    for value in [*rendered.all_objects(), *(r.values for r in rendered.releases)]:
        for s in _strings(value):
            name, tag, _ = split_reference(s)
            if (name.rsplit("/", 1)[-1], tag) in {(n.rsplit("/", 1)[-1], t) for n, t in wanted} and not qualified(s):
                found.add(s)
    return sorted(found)


def versions_pins() -> dict:
    from datacloud.render import versions

    return versions()


def dockerfile_args(path: Path) -> dict[str, str]:
    """ARG defaults of a Dockerfile (the first definition of each name wins)."""
    out: dict[str, str] = {}
    for name, value in _ARG.findall(path.read_text()):
        out.setdefault(name, value.strip("\"'"))
    return out


def jar_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def check_versions(images_dir: Path = IMAGES_DIR, pins: dict | None = None) -> dict[str, str]:
    """The shared versions, or ImageVersionError naming what differs between the two images."""
    spark_df, jupyter_df = images_dir / "spark" / "Dockerfile", images_dir / "jupyter" / "Dockerfile"
    for path in (spark_df, jupyter_df):
        if not path.exists():
            raise ImageVersionError(f"{path} is missing; restore it from git.")
    spark, jupyter = dockerfile_args(spark_df), dockerfile_args(jupyter_df)
    problems = []
    for arg, label in SHARED.items():
        s, j = spark.get(arg), jupyter.get(arg)
        if s is None or j is None:
            where = spark_df if s is None else jupyter_df
            problems.append(f"{label} is not declared (ARG {arg}) in {where.relative_to(images_dir.parent.parent)}")
        elif s != j:
            problems.append(f"{label} {s} in the Spark image but {j} in the Jupyter image")
    if pins is None:
        pins = versions_pins()
    local = pins.get("local", {})
    for arg, key in (
        ("SPARK_VERSION", "spark"),
        ("SCALA_BINARY", "scala_binary"),
        ("MONGO_SPARK_CONNECTOR", "mongo_spark_connector"),
    ):
        want = str(local.get(key, ""))
        if want and spark.get(arg) and spark[arg] != want:
            problems.append(f"{SHARED[arg]} {spark[arg]} in the images but {want} in manifests/versions.yaml (local.{key})")
    if jar_list(images_dir / "spark" / "jars.txt") != jar_list(images_dir / "jupyter" / "jars.txt"):
        problems.append("the connector jar lists (spark/jars.txt, jupyter/jars.txt) differ")
    if problems:
        raise ImageVersionError(
            "the Spark and Jupyter images disagree: "
            + "; ".join(problems)
            + "; make the ARGs in manifests/images/*/Dockerfile equal."
        )
    shared = {label: spark[arg] for arg, label in SHARED.items()}
    log.info("Images | Spark and Jupyter images agree: %s", ", ".join(f"{k} {v}" for k, v in shared.items()))
    return shared
