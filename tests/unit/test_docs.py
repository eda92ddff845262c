"""docs/: the architecture picture renders from its source and is current; doc links resolve."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from datacloud.config import REPO_ROOT
from datacloud.stages import STAGES

DOCS = REPO_ROOT / "docs"
DOT = DOCS / "architecture.dot"
PNG = DOCS / "architecture.png"
RENDER = ["dot", "-Tpng", "-Gdpi=96", str(DOT)]  # the command docs/operations.md documents


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> bytes:
    if not shutil.which("dot"):
        pytest.fail("Graphviz is missing; ./dev setup installs it (Debian package graphviz)")
    out = tmp_path_factory.mktemp("docs") / "architecture.png"
    proc = subprocess.run([*RENDER, "-o", str(out)], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", f"dot warned: {proc.stderr}"
    return out.read_bytes()


def test_architecture_renders_and_shows_every_stage(rendered):
    width, height = png_size(rendered)
    assert width > 800
    assert height > 400
    source = DOT.read_text()
    for stage in STAGES:
        assert re.search(rf"\b{stage}\b", source), f"stage {stage} is missing from docs/architecture.dot"


def test_committed_picture_is_current(rendered):
    """The committed PNG has the layout of a fresh render (regenerate with the command in docs/operations.md)."""
    assert PNG.exists(), "docs/architecture.png is missing"
    assert png_size(PNG.read_bytes()) == png_size(rendered), (
        "docs/architecture.png is older than docs/architecture.dot; run: dot -Tpng -Gdpi=96 docs/architecture.dot "
        "-o docs/architecture.png")


@pytest.mark.parametrize("doc", ["operations.md", "lab.md"])
def test_doc_links_resolve(doc):
    path = DOCS / doc
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).resolve().exists(), f"{doc} links to {target}, which does not exist"


def test_browser_screenshots_default_to_an_ignored_folder(monkeypatch):
    """./dev test must leave the checkout clean: the browser tests' pictures go where git ignores them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("browser_conftest", REPO_ROOT / "tests" / "browser" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("DATACLOUD_SCREENSHOT_DIR", raising=False)
    target = module.screenshot_dir() / "etl_flights_daily-grid.png"
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", str(target)], check=False)
    assert ignored.returncode == 0, f"{target} is not ignored by git: the browser tests would dirty the checkout"
    monkeypatch.setenv("DATACLOUD_SCREENSHOT_DIR", "docs/img")
    assert module.screenshot_dir() == DOCS / "img"  # tools/refresh-screenshots
