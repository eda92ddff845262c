"""The landing zone: one folder per dataset and day, replaced as a whole.

``$DATACLOUD_DATA_DIR/landing/<dataset>/date=YYYY-MM-DD`` is a relative symbolic
link to an immutable version folder beside it (``.date=YYYY-MM-DD.<ns>-<pid>``)
that holds the raw files of one daily drop exactly as received (bytes, one
record per line) and ``_manifest.json``. Landing a day writes a new version
folder and then replaces the link with ``rename(2)``, which is atomic: a
reader sees the old day or the new day, never a missing or half one. A reader
that reads several files takes a ``snapshot()`` (the link resolved once), so
all of them come from one version; a replaced version is kept for
``STALE_AFTER_S`` after it was retired, then removed, together with the
folders of failed attempts, by a later landing of the dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from datacloud import config

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
STALE_AFTER_S = 600  # a retired version, or an attempt untouched this long, is removed by the next landing


def landing_root() -> Path:
    return config.data_dir() / "landing"


def day_dir(dataset: str, day: date, root: Path | None = None) -> Path:
    """The day's link (the path readers and the Spark job name)."""
    return (root or landing_root()) / dataset / f"date={day.isoformat()}"


def land_day(dataset: str, day: date, files: dict[str, Iterable[bytes]], root: Path | None = None) -> dict:
    """Write ``files`` (name -> bytes, ending in a newline: lines or pieces of lines) as the day's drop.

    Returns the manifest: per file its line count, size and sha256.
    """
    link = day_dir(dataset, day, root)
    link.parent.mkdir(parents=True, exist_ok=True)
    version = link.with_name(f".{link.name}.{time.time_ns()}-{os.getpid()}")
    version.mkdir()
    try:
        manifest = _write_version(version, dataset, day, files)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    _swap(link, version)
    _remove_stale(link.parent, keep=version.name)
    log.info("Land | %s %s: %s", dataset, day, ", ".join(f"{n} {m['lines']} lines" for n, m in manifest["files"].items()))
    return manifest


def _write_version(folder: Path, dataset: str, day: date, files: dict[str, Iterable[bytes]]) -> dict:
    manifest: dict = {"dataset": dataset, "date": day.isoformat(), "files": {}}
    for name, lines in files.items():
        digest = hashlib.sha256()
        count = size = 0
        with open(folder / name, "wb") as fh:
            for line in lines:  # lines, or pieces of them: a line is counted at its newline
                fh.write(line)
                digest.update(line)
                count += line.count(b"\n")
                size += len(line)
            fh.flush()
            os.fsync(fh.fileno())
        manifest["files"][name] = {"lines": count, "bytes": size, "sha256": digest.hexdigest()}
    with open(folder / MANIFEST, "w") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return manifest


def _swap(link: Path, version: Path) -> None:
    """Point ``link`` at ``version`` with one rename; the version it pointed at is marked retired now."""
    previous: Path | None = None
    if link.is_symlink():
        previous = link.parent / os.readlink(link)
    elif link.exists():
        # A day landed before links were used is a real folder: moved aside once (the only
        # moment a reader can miss that day), then replaced by the link like any other.
        previous = link.with_name(f".{link.name}.{time.time_ns()}-legacy")
        link.rename(previous)
    pending = link.with_name(f".{link.name}.link-{time.time_ns()}-{os.getpid()}")
    pending.symlink_to(version.name)
    os.replace(pending, link)
    _fsync_dir(link.parent)
    if previous is not None:
        try:
            os.utime(previous)  # retired now: readers holding it have STALE_AFTER_S to finish
        except FileNotFoundError:
            pass


def _remove_stale(folder: Path, keep: str) -> None:
    """Remove the dataset's version folders that no link names and that are older than STALE_AFTER_S."""
    entries = list(folder.iterdir())
    current = {os.readlink(p) for p in entries if p.is_symlink() and not p.name.startswith(".")}
    cutoff = time.time() - STALE_AFTER_S
    for path in entries:
        if not path.name.startswith(".date=") or path.name == keep or path.name in current:
            continue
        try:
            if path.lstat().st_mtime > cutoff:
                continue  # another lander's attempt in progress, or a version retired moments ago
            if path.is_symlink() or not path.is_dir():
                path.unlink()
            else:
                shutil.rmtree(path)
        except FileNotFoundError:
            continue  # another lander removed it first
        log.info("Land | removed stale %s", path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Landed:
    """One version of a landed day: every file a reader takes from it belongs to the same drop."""

    dataset: str
    day: date
    path: Path

    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())

    def lines(self, name: str, max_bytes: int | None = None) -> Iterator[bytes]:
        return _lines(self.path / name, max_bytes)


def snapshot(dataset: str, day: date, root: Path | None = None) -> Landed:
    """The day's current version (its link resolved once)."""
    from datacloud.errors import UserError

    link = day_dir(dataset, day, root)
    path = Path(os.path.realpath(link))
    if not (path / MANIFEST).is_file():
        raise UserError(f"nothing is landed for {dataset} on {day} ({link / MANIFEST} is missing); run the land task first.")
    return Landed(dataset, day, path)


def read_manifest(dataset: str, day: date, root: Path | None = None) -> dict:
    return snapshot(dataset, day, root).manifest()


class LongLine(bytes):
    """The first bytes of a line longer than a reader's cap; ``size`` is the whole line's length."""

    size: int


def read_lines(dataset: str, day: date, name: str, root: Path | None = None, max_bytes: int | None = None) -> Iterable[bytes]:
    """The raw lines of one landed file (bytes; decoding is the reader's business).

    With ``max_bytes``, no line is held in memory beyond that: a longer one is
    yielded as a ``LongLine`` of its first ``max_bytes + 1`` bytes, the rest read
    past in pieces and counted in its ``size`` (newline excluded).
    """
    return snapshot(dataset, day, root).lines(name, max_bytes)


def _lines(path: Path, max_bytes: int | None) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        if max_bytes is None:
            yield from fh
            return
        while line := fh.readline(max_bytes + 1):
            if len(line) <= max_bytes or line.endswith(b"\n"):
                yield line
                continue
            size = len(line)
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                size += len(rest)
            size += len(rest.rstrip(b"\n"))
            long = LongLine(line)
            long.size = size
            yield long
