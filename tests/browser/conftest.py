"""Browser tests: headless Debian chromium driven by playwright-core from node.

pytest prepares a scenario (JSON), runs ``node tests/browser/airflow_ui.js``
against the session's ``airflow_stack`` and checks the result it prints.
playwright-core comes from ``./dev setup`` (tests/browser/package.json,
installed under the datacloud cache); no browser is ever downloaded.
Screenshots go to ``out/screenshots/`` (ignored by git), so ``./dev test``
leaves the checkout clean. Refreshing the documentation's pictures in docs/img/
is a deliberate command: ``tools/refresh-screenshots`` (it runs these tests with
``DATACLOUD_SCREENSHOT_DIR=docs/img``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from datacloud import config

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "airflow_ui.js"


def screenshot_dir() -> Path:
    """Where the scenarios write their pictures: ``DATACLOUD_SCREENSHOT_DIR`` or ``out/screenshots``."""
    raw = os.environ.get("DATACLOUD_SCREENSHOT_DIR", "").strip()
    path = Path(raw) if raw else config.REPO_ROOT / "out" / "screenshots"
    return path if path.is_absolute() else config.REPO_ROOT / path


IMG_DIR = screenshot_dir()
CHROMIUM = Path(os.environ.get("DATACLOUD_CHROMIUM", "/usr/bin/chromium"))


def node_modules() -> Path:
    return config.cache_dir() / "node" / "node_modules"


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Fail (not skip): CI must run these, and ./dev setup installs what they need."""
    problems = []
    if not shutil.which("node"):
        problems.append("node is not installed (./dev setup installs nodejs)")
    if not CHROMIUM.exists():
        problems.append(f"{CHROMIUM} is missing (./dev setup installs Debian's chromium)")
    if not (node_modules() / "playwright-core").is_dir():
        problems.append(f"playwright-core is not in {node_modules()} (run ./dev setup)")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def run_ui(browser_ready, tmp_path):
    """Run one scenario in a fresh browser profile; return the driver's JSON result."""

    def run(scenario: dict, timeout: float = 170) -> dict:
        scenario = {"user_data_dir": str(tmp_path / "chromium-profile"), "timeout_s": 120,
                    "failure_screenshot": str(tmp_path / "failure.png"), **scenario}
        # Scenarios name their pictures; they land in IMG_DIR (never in the source tree by default).
        scenario["screenshots"] = {key: str(IMG_DIR / name) for key, name in scenario.get("screenshots", {}).items()}
        IMG_DIR.mkdir(parents=True, exist_ok=True)
        path = tmp_path / "scenario.json"
        path.write_text(json.dumps(scenario))
        env = {**os.environ, "NODE_PATH": str(node_modules()), "DATACLOUD_CHROMIUM": str(CHROMIUM)}
        proc = subprocess.run(["node", str(DRIVER), str(path)], env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        steps = proc.stderr.strip()
        if proc.returncode != 0:
            pytest.fail(f"browser scenario failed (exit {proc.returncode}):\n{steps}")
        print(steps)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
