"""The Spark and Jupyter images must agree: preflight refuses a mismatch.

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
        from datacloud.render import versions

        pins = versions()
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
