"""MongoDB side of the pipelines: the connection, and idempotent per-day writes.

``connect()`` goes through the mongo provider's ``MongoHook`` on the
``datacloud_mongo`` connection (locally ``AIRFLOW_CONN_DATACLOUD_MONGO``); outside
Airflow, or when that connection is not defined, ``DATACLOUD_MONGO_URI`` is used.

``sync_day()`` makes the documents of one day in a collection exactly a given
set, writing only new or changed documents in unordered bulk writes of a batch
size, and deleting the day's documents that are gone; what is "new or changed"
is decided against the stored documents, so a re-run also repairs documents
changed or deleted in MongoDB. A day no ingest has written yet (``first_write``,
marked in ``ingest_marks``) has nothing to compare with and is inserted without
that read, which on FerretDB scans the whole collection. Because every ``_id`` is deterministic, a run
killed mid-batch leaves a subset of the right documents and the next run
completes it; a second run writes nothing and reports every document unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import bson

from datacloud import config
from datacloud.errors import TransientError, UserError

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
MARKS = "ingest_marks"  # the days ingest has begun to write, per collection (see first_write)


def server_selection_ms() -> int:
    """How long a client waits for a reachable server (``DATACLOUD_MONGO_TIMEOUT_MS``, default 10 s)."""
    return int(os.environ.get("DATACLOUD_MONGO_TIMEOUT_MS", "10000"))


class MongoUnreachable(TransientError):
    """MongoDB did not answer; retried by the task's policy."""


def redact(uri: str) -> str:
    """The URI without user and password (safe for logs and error messages)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class Mongo:
    """A connected client, the URI it was built from, and the database to use."""

    client: Any
    uri: str
    database: str

    @property
    def db(self):
        return self.client[self.database]

    def close(self) -> None:
        self.client.close()


def connect(uri: str | None = None, conn_id: str = config.MONGO_CONN_ID) -> Mongo:
    """A MongoDB client: ``uri`` if given, else the Airflow connection, else ``DATACLOUD_MONGO_URI``."""
    import pymongo

    if uri is None:
        hook = _hook(conn_id)
        if hook is not None:
            # MongoHook passes its extras as MongoClient options; fail fast instead of the 30 s default.
            hook.extras.setdefault("serverSelectionTimeoutMS", server_selection_ms())
            database = hook.connection.schema or config.MONGO_DATABASE
            return Mongo(hook.get_conn(), with_options(hook.uri, hook.extras), database)
        uri = os.environ.get("DATACLOUD_MONGO_URI")
        if not uri:
            raise UserError(
                f"no MongoDB configured: define the Airflow connection {conn_id} "
                "or set DATACLOUD_MONGO_URI (./dev env prints it)."
            )
    database = pymongo.uri_parser.parse_uri(uri).get("database") or config.MONGO_DATABASE
    return Mongo(pymongo.MongoClient(uri, serverSelectionTimeoutMS=server_selection_ms()), uri, database)


def with_options(uri: str, extras: dict[str, Any]) -> str:
    """URI plus the connection's extras as URI options. The hook hands its extras to pymongo as keyword
    arguments but leaves them out of its ``uri``; a Spark job gets only the URI, and without ``authSource``
    its driver would authenticate against the database in the path instead of ``admin``."""
    options = {
        k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in extras.items() if isinstance(v, str | int | bool)
    }
    if not options:
        return uri
    return uri + ("&" if "?" in uri else "?") + urllib.parse.urlencode(options)


def _hook(conn_id: str):
    try:
        from airflow.providers.mongo.hooks.mongo import MongoHook
    except ImportError:
        return None
    try:
        return MongoHook(mongo_conn_id=conn_id)
    except Exception as exc:
        if "isn't defined" in str(exc) or "not found" in str(exc).lower() or type(exc).__name__ == "AirflowNotFoundException":
            return None
        raise


@contextlib.contextmanager
def reachable(uri: str) -> Iterator[None]:
    """Turn pymongo's connection failures into one sentence naming the server."""
    from pymongo.errors import ConnectionFailure

    try:
        yield
    except ConnectionFailure as exc:
        reason = str(exc).split(",")[0].split(" (configured timeouts")[0][:200]
        raise MongoUnreachable(f"MongoDB at {redact(uri)} is unreachable ({reason}).") from None


@dataclass
class SyncCounts:
    upserted: int = 0  # new or changed documents written
    unchanged: int = 0  # already there with the same bytes
    removed: int = 0  # documents of the day that are no longer in the set

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def stored_digests(collection, day: str) -> dict[str, str]:
    """``_id`` -> sha256 of the stored BSON of each of the day's documents (one query, raw bytes, no decoding)."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return {doc["_id"]: _digest(doc.raw) for doc in raw.find({"date": day})}


def sync_day(collection, day: str, docs: list[dict[str, Any]], batch_size: int = DEFAULT_BATCH) -> SyncCounts:
    """Make ``collection``'s documents of ``day`` exactly ``docs`` (each with a deterministic ``_id``).

    The comparison is with the documents themselves, not with a record of what
    an earlier run wrote: the day's stored documents are read once as raw BSON
    and each one's sha256 is compared with that of the document it should be
    (pymongo's encoding; MongoDB and FerretDB hand the same bytes back). Missing
    documents go as ``InsertOne``, different ones (changed by hand, or by a
    corrected drop) as ``ReplaceOne(upsert=True)``, mixed in unordered bulk
    writes of ``batch_size``; stored ids that are not in ``docs`` (deleted rows,
    strays written by hand) are deleted. So a re-run repairs whatever happened
    to the day in MongoDB. An insert that meets a duplicate key (a concurrent
    writer) is retried as an upsert, so the outcome equals upserting everything.

    The one exception is a day that no ingest has ever written (``first_write``):
    there is nothing of ours to compare with, so its documents are inserted
    without reading the day (on FerretDB that read is a scan of the whole
    collection, see docs/pipeline.md); if one of them meets a document already
    there, the day is read and converged as above after all.
    """
    if first_write(collection, day):
        counts, clashed = _insert_new(collection, docs, batch_size)
        if not clashed:
            return counts
        log.info("Ingest | %s %s: %d documents were there already; comparing the day", collection.name, day, clashed)
        after = _converge(collection, day, docs, batch_size)
        return SyncCounts(counts.upserted + after.upserted, after.unchanged - counts.upserted, after.removed)
    return _converge(collection, day, docs, batch_size)


def first_write(collection, day: str) -> bool:
    """Whether ingest has never written ``day`` into ``collection``; marks the day as written from now on.

    ``ingest_marks`` holds ``<collection>/<day>`` for every day ingest has begun to
    write (marked before its first document) and ``<collection>/since-empty``, set
    while the collection was still empty: from then on every day holding documents
    written by ingest is marked. A collection with documents but without that mark
    (loaded by an earlier version, or by another writer) never has a first write:
    each of its days is read. Every lookup is by ``_id``: cheap on MongoDB and FerretDB.
    """
    from pymongo.errors import DuplicateKeyError

    marks = collection.database[MARKS]
    key = f"{collection.name}/{day}"
    if marks.find_one({"_id": key}, {"_id": 1}) is not None:
        return False
    since = f"{collection.name}/since-empty"
    if marks.find_one({"_id": since}, {"_id": 1}) is None:
        if collection.find_one({}, {"_id": 1}) is not None:
            return False  # documents from before the marks: this day may hold some
        with contextlib.suppress(DuplicateKeyError):  # another run marked it first
            marks.insert_one({"_id": since, "collection": collection.name})
    try:
        marks.insert_one({"_id": key, "collection": collection.name, "date": day})
    except DuplicateKeyError:
        return False  # another run of the day began meanwhile
    return True


def _insert_new(collection, docs: list[dict[str, Any]], batch_size: int) -> tuple[SyncCounts, int]:
    """Insert ``docs`` in unordered batches; returns the counts and how many ids were taken already."""
    from pymongo import InsertOne
    from pymongo.errors import BulkWriteError

    counts = SyncCounts()
    clashed = 0
    for n, batch in enumerate(_batches(docs, batch_size), 1):
        try:
            collection.bulk_write([InsertOne(d) for d in batch], ordered=False)
            written = len(batch)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            others = [e for e in errors if e.get("code") != 11000]
            if others:
                raise TransientError(
                    f"{collection.name}: {len(others)} of {len(batch)} writes failed in batch {n}; "
                    f"first: {str(others[0].get('errmsg'))[:300]}"
                ) from None
            clashed += len(errors)
            written = len(batch) - len(errors)
        counts.upserted += written
        log.info("Ingest | %s batch %d: %d documents written", collection.name, n, written)
    return counts, clashed


def _converge(collection, day: str, docs: list[dict[str, Any]], batch_size: int) -> SyncCounts:
    """The day read once and compared by digest: write what is missing or different, delete what is not in ``docs``."""
    from pymongo import DeleteMany, InsertOne, ReplaceOne

    stored = stored_digests(collection, day)
    counts = SyncCounts()
    ops: list[tuple[Any, dict[str, Any]]] = []
    for doc in docs:
        old = stored.pop(doc["_id"], None)
        if old is None:
            ops.append((InsertOne(doc), doc))
        elif old == _digest(bson.encode(doc)):
            counts.unchanged += 1
        else:
            ops.append((ReplaceOne({"_id": doc["_id"]}, doc, upsert=True), doc))
    for n, batch in enumerate(_batches(ops, batch_size), 1):
        _bulk(collection, batch, n)
        counts.upserted += len(batch)
        log.info("Ingest | %s batch %d: %d documents written", collection.name, n, len(batch))
    if stored:
        stale = sorted(stored)
        for batch in _batches(stale, batch_size):
            collection.bulk_write([DeleteMany({"_id": {"$in": batch}})], ordered=False)
        counts.removed = len(stale)
    return counts


def _bulk(collection, batch: list[tuple[Any, dict[str, Any]]], n: int) -> None:
    from pymongo import ReplaceOne
    from pymongo.errors import BulkWriteError

    try:
        collection.bulk_write([op for op, _ in batch], ordered=False)
        return
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors") or []
    retry = [e for e in errors if e.get("code") == 11000]
    others = [e for e in errors if e.get("code") != 11000]
    if others:
        raise TransientError(
            f"{collection.name}: {len(others)} of {len(batch)} writes failed in batch {n}; "
            f"first: {str(others[0].get('errmsg'))[:300]}"
        )
    docs = [batch[e["index"]][1] for e in retry]
    log.info("Ingest | %s batch %d: %d documents appeared meanwhile; upserting them", collection.name, n, len(docs))
    collection.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False)


def ensure_indexes(db, specs: dict[str, list[tuple[str, int]]]) -> None:
    """Create the single-field indexes the per-day queries need (idempotent)."""
    for collection, keys in specs.items():
        for key in keys:
            db[collection].create_index([key])
