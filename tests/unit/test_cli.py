"""./dev subcommands that need no services: validate, capacity, render, run's range, status."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "2013-01-01 .. 2013-01-07"),
        (["--from", "2013-02-01", "--to", "2013-02-28"], "2013-02-01 .. 2013-02-28"),
        (["--from", "2013-03-05"], "2013-03-05 .. 2013-03-05"),
        (["--to", "2013-01-03"], "2013-01-01 .. 2013-01-03"),
        (["--from", "2013-01-01", "--to", "2013-12-31"], "2013-01-01 .. 2013-12-31"),
    ],
)
def test_run_backfills_the_range_it_is_given(argv, expected, monkeypatch) -> None:
    from datacloud import mainjob

    ran = []
    monkeypatch.setattr(mainjob, "run", lambda first, last: ran.append(f"{first} .. {last}") or 0)
    assert main(["run", *argv]) == 0
    assert ran == [expected]


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["--from", "2013-02-30"], "--from '2013-02-30' is not a date; write it as YYYY-MM-DD, e.g. --from 2013-02-01."),
        (["--from", "20130201"], "--from '20130201' is not a date; write it as YYYY-MM-DD, e.g. --from 2013-02-01."),
        (["--to", "yesterday"], "--to 'yesterday' is not a date; write it as YYYY-MM-DD, e.g. --to 2013-02-01."),
        (["--from", "2014-01-01"], "--from 2014-01-01 is outside the flights data; pick days from 2013-01-01 to 2013-12-31."),
        (["--from", "2013-01-01", "--to", "2014-01-01"], "--to 2014-01-01 is outside the flights data; pick days from"),
        (
            ["--from", "2013-02-10", "--to", "2013-02-01"],
            "--to 2013-02-01 is before --from 2013-02-10; give the first day first.",
        ),
    ],
)
def test_run_refuses_a_bad_range_in_one_sentence(argv, sentence, monkeypatch, capsys) -> None:
    from datacloud import mainjob

    monkeypatch.setattr(mainjob, "run", lambda first, last: pytest.fail("must not start anything"))
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sentence}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_status_lists_the_connect_server(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DATACLOUD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATACLOUD_SPARK_CONNECT_PORT", "15123")
    monkeypatch.delenv("DATACLOUD_SPARK_TARGET", raising=False)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "spark-connect  stopped" in out and "sc://127.0.0.1:15123" in out
    assert "flights transform target: connect" in out


def test_a_long_range_is_backfilled_in_chunks_that_sqlite_accepts() -> None:
    from datetime import date

    from datacloud import mainjob

    year = mainjob.chunks(date(2013, 1, 1), date(2013, 12, 31))
    assert len(year) == 12 and all((b - a).days + 1 <= mainjob.CHUNK_DAYS for a, b in year)
    assert year[0] == (date(2013, 1, 1), date(2013, 1, 31)) and year[-1][1] == date(2013, 12, 31)
    assert sum((b - a).days + 1 for a, b in year) == 365
    assert all(year[i][1].toordinal() + 1 == year[i + 1][0].toordinal() for i in range(len(year) - 1))  # no gap
    assert mainjob.chunks(date(2013, 1, 1), date(2013, 1, 7)) == [(date(2013, 1, 1), date(2013, 1, 7))]
