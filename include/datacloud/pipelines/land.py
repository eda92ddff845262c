"""The landing zone: one folder per dataset and day, replaced as a whole.

``$DATACLOUD_DATA_DIR/landing/<dataset>/date=YYYY-MM-DD/`` holds the raw files
of one daily drop exactly as received (bytes, one record per line). Writing a
day goes to a sibling temporary folder first and then swaps it in with
renames, so readers see the old day or the new day, never half of one, and
re-landing a day is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from datacloud import config

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


def landing_root() -> Path:
    return config.data_dir() / "landing"


def day_dir(dataset: str, day: date, root: Path | None = None) -> Path:
    return (root or landing_root()) / dataset / f"date={day.isoformat()}"


def land_day(dataset: str, day: date, files: dict[str, Iterable[bytes]], root: Path | None = None) -> dict:
    """Write ``files`` (name -> bytes, ending in a newline: lines or pieces of lines) as the day's drop.

    Returns the manifest: per file its line count, size and sha256.
    """
    target = day_dir(dataset, day, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    manifest: dict = {"dataset": dataset, "date": day.isoformat(), "files": {}}
    for name, lines in files.items():
        digest = hashlib.sha256()
        count = size = 0
        with open(tmp / name, "wb") as fh:
            for line in lines:  # lines, or pieces of them: a line is counted at its newline
                fh.write(line)
                digest.update(line)
                count += line.count(b"\n")
                size += len(line)
            fh.flush()
            os.fsync(fh.fileno())
        manifest["files"][name] = {"lines": count, "bytes": size, "sha256": digest.hexdigest()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    log.info("Land | %s %s: %s", dataset, day, ", ".join(f"{n} {m['lines']} lines" for n, m in manifest["files"].items()))
    return manifest


def read_manifest(dataset: str, day: date, root: Path | None = None) -> dict:
    from datacloud.errors import UserError

    path = day_dir(dataset, day, root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"nothing is landed for {dataset} on {day} ({path} is missing); run the land task first.") from None


class LongLine(bytes):
    """The first bytes of a line longer than a reader's cap; ``size`` is the whole line's length."""

    size: int


def read_lines(dataset: str, day: date, name: str, root: Path | None = None, max_bytes: int | None = None) -> Iterable[bytes]:
    """The raw lines of one landed file (bytes; decoding is the reader's business).

    With ``max_bytes``, no line is held in memory beyond that: a longer one is
    yielded as a ``LongLine`` of its first ``max_bytes + 1`` bytes, the rest read
    past in pieces and counted in its ``size`` (newline excluded).
    """
    path = day_dir(dataset, day, root) / name
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
