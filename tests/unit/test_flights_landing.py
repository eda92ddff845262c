"""The landing zone swaps a re-landed day atomically and cleans up after failed attempts (issue 12, item 10)."""

from __future__ import annotations

import os
import threading
import time
from datetime import date

import pytest

from datacloud.errors import UserError
from datacloud.pipelines import land

DAY = date(2013, 1, 1)
DATASET = "flights"


def _files(n: int) -> dict[str, list[bytes]]:
    return {"flights.jsonl": [b'{"n": %d}\n' % n] * n, "airlines.jsonl": [b'{"carrier": "UA"}\n']}


def _readers(root, stop: threading.Event, errors: list[str], torn: list[str]) -> list[threading.Thread]:
    def by_path() -> None:  # the plain calls, as the tasks made them before
        while not stop.is_set():
            try:
                land.read_manifest(DATASET, DAY, root)
                list(land.read_lines(DATASET, DAY, "flights.jsonl", root))
            except (OSError, UserError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    def by_snapshot() -> None:  # one version of the day for everything a task reads
        while not stop.is_set():
            try:
                day = land.snapshot(DATASET, DAY, root)
                lines = list(day.lines("flights.jsonl"))
                if len(lines) != day.manifest()["files"]["flights.jsonl"]["lines"]:
                    torn.append(f"{len(lines)} lines against a manifest of another version")
            except (OSError, UserError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    return [threading.Thread(target=by_path), threading.Thread(target=by_snapshot)]


def test_concurrent_readers_never_see_a_missing_or_torn_day(tmp_path):
    root = tmp_path / "landing"
    land.land_day(DATASET, DAY, _files(3), root)
    stop, errors, torn = threading.Event(), [], []
    readers = _readers(root, stop, errors, torn)
    for r in readers:
        r.start()
    try:
        for i in range(150):
            land.land_day(DATASET, DAY, _files(3 + i % 2), root)
    finally:
        stop.set()
        for r in readers:
            r.join(10)
    assert errors[:3] == []
    assert torn[:3] == []
    assert land.read_manifest(DATASET, DAY, root)["files"]["flights.jsonl"]["lines"] == 4


def test_day_is_a_link_to_an_immutable_version(tmp_path):
    root = tmp_path / "landing"
    land.land_day(DATASET, DAY, _files(3), root)
    first = land.snapshot(DATASET, DAY, root).path
    land.land_day(DATASET, DAY, _files(4), root)
    link = land.day_dir(DATASET, DAY, root)
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative: the same inside a pod's mount
    assert land.snapshot(DATASET, DAY, root).path != first
    assert (first / "flights.jsonl").read_bytes() == b'{"n": 3}\n' * 3  # the replaced version stays for its readers


def test_stale_attempts_and_retired_versions_are_removed(tmp_path):
    root = tmp_path / "landing"
    folder = root / DATASET
    folder.mkdir(parents=True)
    old = time.time() - land.STALE_AFTER_S - 60
    for name in (".date=2013-01-01.tmp-4242", ".date=2013-01-01.old-4242", ".date=2013-01-05.17000-99"):
        (folder / name).mkdir()
        (folder / name / "flights.jsonl").write_bytes(b"half\n")
        os.utime(folder / name, (old, old))
    young = folder / ".date=2013-01-01.17001-77"  # another lander's attempt, still being written
    young.mkdir()
    land.land_day(DATASET, DAY, _files(3), root)
    land.land_day(DATASET, DAY, _files(4), root)  # retires the first version: kept for its readers
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([young.name, "date=2013-01-01", land.snapshot(DATASET, DAY, root).path.name, _retired(folder, young)])
    # Once retired for longer than STALE_AFTER_S, a version goes at the next landing.
    retired = folder / _retired(folder, young)
    os.utime(retired, (old, old))
    land.land_day(DATASET, date(2013, 1, 2), _files(1), root)
    assert not retired.exists()
    assert land.read_manifest(DATASET, DAY, root)["files"]["flights.jsonl"]["lines"] == 4


def _retired(folder, young) -> str:
    """The version the second landing replaced."""
    current = os.readlink(folder / "date=2013-01-01")
    (name,) = [p.name for p in folder.iterdir() if p.name.startswith(".date=2013-01-01.") and p.name not in (current, young.name)]
    return name


def test_a_day_landed_by_the_old_layout_is_taken_over(tmp_path):
    root = tmp_path / "landing"
    legacy = land.day_dir(DATASET, DAY, root)
    legacy.mkdir(parents=True)
    (legacy / "flights.jsonl").write_bytes(b"x\n")
    land.land_day(DATASET, DAY, _files(2), root)
    assert legacy.is_symlink()
    assert land.read_manifest(DATASET, DAY, root)["files"]["flights.jsonl"]["lines"] == 2


def test_nothing_landed_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match=r"nothing is landed for flights on 2013-01-01 \(.* is missing\); run the land task"):
        land.snapshot(DATASET, DAY, tmp_path)
