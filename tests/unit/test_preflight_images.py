"""Preflight refuses a Jupyter image whose Spark/Python differ from the Spark image's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from datacloud.images import ImageVersionError
from datacloud.inventory import load_inventory
from datacloud.stages import STAGES, preflight

ROOT = Path(__file__).resolve().parents[2]


def test_image_mismatch_is_a_preflight_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = SimpleNamespace(inv=load_inventory(ROOT / "inventory.example.yaml"), dry_run=False)
    monkeypatch.setattr(preflight, "problems", lambda inv, facts: [])
    monkeypatch.setattr(preflight, "table", lambda inv, facts: "")

    def mismatch() -> None:
        raise ImageVersionError("Spark 4.2.0 in the Spark image but 4.1.1 in the Jupyter image; make them equal.")

    monkeypatch.setattr(preflight, "check_versions", mismatch)
    with pytest.raises(preflight.PreflightError, match=r"Spark 4.2.0 in the Spark image but 4.1.1 in the Jupyter image"):
        preflight.check(ctx, [])


def test_shipped_images_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = SimpleNamespace(
        inv=load_inventory(ROOT / "inventory.example.yaml"), dry_run=True, params=SimpleNamespace(stages=STAGES)
    )
    monkeypatch.setattr(preflight, "problems", lambda inv, facts: [])
    monkeypatch.setattr(preflight, "table", lambda inv, facts: "")
    preflight.check(ctx, [])
