"""Static checks that gate every change: ruff on the Python tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    trees = [d for d in ("include", "dags", "plugins", "tests") if (ROOT / d).is_dir()]
    out = subprocess.run([str(ruff), "check", *trees], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]
