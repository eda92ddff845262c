"""./dev subcommands that need no services: validate, capacity, render."""

from __future__ import annotations

from pathlib import Path

import yaml

from datacloud.cli import main
from datacloud.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]


def test_validate_reference(capsys) -> None:
    assert main(["validate", "--inventory", str(ROOT / "inventory.example.yaml")]) == 0
    assert "valid (5 nodes, control plane master, storage rook-ceph)" in capsys.readouterr().out


def test_validate_bad_prints_sentences_not_tracebacks(tmp_path: Path, capsys) -> None:
    data = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())
    data["nodes"][1]["address"] = "196.168.1.2"  # the thesis's typo
    data["nodes"][2]["cpu"] = "four"
    bad = tmp_path / "inv.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["validate", "--inventory", str(bad)]) == 2
    err = capsys.readouterr().err
    # field errors come first; cross-field checks (the address) run once fields are valid
    assert err.splitlines() == ["error: nodes[2].cpu must be a whole number, got 'four'."]
    assert "Traceback" not in err


def test_missing_inventory_is_one_sentence(tmp_path: Path, capsys) -> None:
    assert main(["capacity", "--inventory", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: inventory file ") and err.count("\n") == 0


def test_capacity_reference_fits_and_thesis_layout_does_not(tmp_path: Path, capsys) -> None:
    assert main(["capacity", "--inventory", str(ROOT / "inventory.example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "result: fits" in out
    data = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())
    data["components"]["mongo"]["shards"] = 4  # the thesis's 4 x 3 + 3
    thesis = tmp_path / "thesis.yaml"
    thesis.write_text(yaml.safe_dump(data))
    assert main(["capacity", "--inventory", str(thesis)]) == 1
    out = capsys.readouterr().out
    assert "result: does NOT fit" in out and "over the 60 % budget" in out


def test_render_writes_a_folder_per_stage_and_charts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["render", "--inventory", str(ROOT / "inventory.example.yaml"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(STAGES)
    charts = yaml.safe_load((out / "charts.yaml").read_text())
    assert isinstance(charts["releases"], list)
    for rel in charts["releases"]:
        assert rel["version"] and rel["chart"] and rel["repo"], rel
