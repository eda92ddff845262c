"""Unit tests write inventories into pytest's temporary folders: declare those an
inventory folder (DATACLOUD_INVENTORY_DIRS, datacloud.config.inventory_dirs), as an
administrator declares theirs."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _pytest_temp_is_an_inventory_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATACLOUD_INVENTORY_DIRS", str(tmp_path_factory.getbasetemp()))
