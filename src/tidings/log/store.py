"""The durable store: the N shards of one data directory.

    <directory>/
      LOCK                      flock'd while a Store has the directory open
      store.json                {"format": 1, "shards": N}; N cannot change
      shard-000/
        00000000000000000001.log    segments, named by their first offset
        00000000000000052113.log
        trimmed.json                per-topic trim points (see checkpoint.py)
      shard-001/ ...

A topic lives in shard ``shard_of(topic, N)``. Offsets come from one sequence per
shard, so within a topic they are strictly increasing but not contiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tidings.errors import StorageError, SyncFailed
from tidings.log.files import FileSystem
from tidings.log.shard import AppendCallback, AppendDone, Shard
from tidings.log.types import UNLIMITED, AppendResult, RetentionPolicy, StoredRecord
from tidings.protocol.topics import shard_of, validate_topic

FORMAT = 1
#: Shards of a new store when the caller does not say. One: on a single disk,
#: fdatasyncs of different files barely overlap, so every extra shard splits the
#: group commits into smaller ones (docs/storage.md, "Shards on one disk").
DEFAULT_SHARDS = 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
#: Topics whose shard is remembered rather than recomputed (validation + CRC) per call.
ROUTE_CACHE = 1 << 20
log = logging.getLogger(__name__)


class _Meta(msgspec.Struct):
    format: int
    shards: int


def _unlimited(topic: str) -> RetentionPolicy:
    return UNLIMITED


class Store:
    """Sharded, durable, deduplicating log of topics. Open with ``await Store.open(...)``."""

    def __init__(
        self,
        directory: Path,
        shards: int,
        *,
        fs: FileSystem,
        lock: int,
        retention: Callable[[str], RetentionPolicy],
        segment_bytes: int,
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        """Use ``Store.open``; this only builds the unopened shards."""
        self.directory = directory
        self._fs = fs
        self._lock = lock
        self._retention = retention
        self._on_fatal = on_fatal
        self._subscribers: list[AppendCallback] = []
        self._routes: dict[str, Shard] = {}
        self._trimmer: asyncio.Task[None] | None = None
        self._closed = False
        #: The exception of the failed write or sync that stopped the store, if any.
        self.failed: BaseException | None = None
        self.shards = [
            Shard(
                n,
                directory / f"shard-{n:03d}",
                fs,
                segment_bytes=segment_bytes,
                subscribers=self._subscribers,
                on_fatal=self._fatal,
                retention=retention,
            )
            for n in range(shards)
        ]

    @classmethod
    async def open(
        cls,
        directory: str | Path,
        shards: int | None = None,
        *,
        retention: Callable[[str], RetentionPolicy] | None = None,
        files: FileSystem | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_fatal: Callable[[BaseException], None] | None = None,
        trim_interval: float | None = 1.0,
    ) -> Store:
        """Open (or create) the store in ``directory`` and recover every shard.

        ``shards`` is fixed when the store is created; None takes the count an
        existing store was created with, or ``DEFAULT_SHARDS`` for a new one.

        ``retention(topic)`` gives each topic's policy (default: keep everything);
        it is applied by ``trim()``, which runs every ``trim_interval`` seconds
        (None: only when called). ``on_fatal(exc)`` is called once when a write or
        fdatasync fails: from then on every append raises ``SyncFailed`` and the
        server must stop, because the page cache may no longer match the disk.

        Each shard writes and fdatasyncs its batches in a thread of its own
        (``writer.py``), one batch at a time.

        Raises ``CorruptLog`` when a file is damaged other than at its tail, and
        ``StorageError`` when the directory is locked by another store or was created
        with a different number of shards.
        """
        fs = files or FileSystem()
        root = Path(directory)
        fs.makedirs(root)
        lock = fs.lock(root / "LOCK")
        opened: list[Shard] = []
        try:
            shards = cls._check_meta(fs, root, shards)
            store = cls(
                root,
                shards,
                fs=fs,
                lock=lock,
                retention=retention or _unlimited,
                segment_bytes=segment_bytes,
                on_fatal=on_fatal,
            )
            for shard in store.shards:
                await shard.open()
                opened.append(shard)
        except BaseException:
            for shard in opened:
                await shard.close()
            fs.unlock(lock)
            raise
        if trim_interval is not None:
            store._trimmer = asyncio.get_running_loop().create_task(
                store._trim_every(trim_interval), name="tidings-log-trim"
            )
        return store

    @staticmethod
    def _check_meta(fs: FileSystem, root: Path, shards: int | None) -> int:
        """The store's shard count: checked against (or taken from) ``store.json``, or written there."""
        if shards is not None and shards < 1:
            raise ValueError("a store needs at least one shard")
        path = root / "store.json"
        if fs.exists(path):
            meta = msgspec.json.decode(fs.read_all(path), type=_Meta)
            if meta.format != FORMAT or meta.shards != (shards or meta.shards):
                raise StorageError(
                    f"{root} holds format {meta.format} with {meta.shards} shards; "
                    f"asked for format {FORMAT} with {shards} shards"
                )
            return meta.shards
        shards = shards or DEFAULT_SHARDS
        fs.write_atomic(path, msgspec.json.encode(_Meta(FORMAT, shards)))
        return shards

    def _fatal(self, exc: BaseException) -> None:
        if self.failed is not None:
            return
        self.failed = exc
        for shard in self.shards:
            shard.fail(exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _shard(self, topic: str) -> Shard:
        shard = self._routes.get(topic)
        if shard is None:
            shard = self.shards[shard_of(validate_topic(topic), len(self.shards))]
            if len(self._routes) < ROUTE_CACHE:
                self._routes[topic] = shard
        return shard

    async def append(self, topic: str, msg_id: str, ts: int, payload: bytes) -> AppendResult:
        """Store a record and return its offset once it is durable (its batch was fdatasync'd).

        If ``(topic, msg_id)`` is already stored and not yet trimmed, or is being
        stored right now, nothing is written and the answer is the original offset
        with ``duplicate=True`` (for an in-flight original, once that is durable).

        Raises ``SyncFailed`` if the write or fdatasync of this record's batch, or of
        any earlier batch of the store, failed: the record must be treated as not
        stored and the server must stop. Raises ``InvalidTopic`` for a malformed
        topic, ``ValueError`` for a record over the size limit, ``StorageError``
        after ``close()``. If the caller is cancelled, the record may still be stored.
        """
        if self.failed is not None:
            raise SyncFailed(f"the store stopped after a failed sync: {self.failed}")
        return await self._shard(topic).append(topic, msg_id, ts, payload)

    def submit(
        self, topic: str, msg_id: str, ts: int, payload: bytes, done: AppendDone, max_queue: int | None = None
    ) -> None:
        """``append`` without a coroutine or a future: queue the record now.

        ``done`` is called once, later, with what ``append`` would return (or the
        exception it would raise). Raises at once, like ``append``, for a failed
        or closed store, and ``RetryLater`` if ``topic``'s shard already has
        ``max_queue`` appends queued.
        """
        if self.failed is not None:
            raise SyncFailed(f"the store stopped after a failed sync: {self.failed}")
        shard = self._routes.get(topic)  # _shard's lookup, inline: this runs for every publish
        if shard is None:
            shard = self._shard(topic)
        shard.submit(topic, msg_id, ts, payload, done, max_queue)

    def read(self, topic: str, after: int, limit: int = 1000) -> list[StoredRecord]:
        """Up to ``limit`` retained records of ``topic`` with offsets above ``after``, ascending.

        Only durable records are returned. Raises ``CorruptLog`` if a record on disk
        no longer matches its CRC. If ``after < trimmed_through(topic)``, records
        were removed by retention; the caller reports that gap.
        """
        return self._shard(topic).read(topic, after, limit)

    def head(self, topic: str) -> int:
        """The highest offset ever stored durably in ``topic`` (trimmed or not); 0 if none."""
        return self._shard(topic).head(topic)

    def queue_depth(self, topic: str) -> int:
        """Appends queued for the writer of ``topic``'s shard."""
        return self._shard(topic).queue_depth

    def count(self, topic: str) -> int:
        """How many durable records of ``topic`` are retained."""
        return self._shard(topic).count(topic)

    def trimmed_through(self, topic: str) -> int:
        """The highest offset of ``topic`` removed by retention; 0 if none."""
        return self._shard(topic).trimmed_through(topic)

    def offset_at_time(self, topic: str, ts: int) -> int:
        """The offset to pass as ``after`` to read ``topic`` from the first record with time >= ``ts``.

        Record times are taken as non-decreasing (a record older than its
        predecessor counts as the predecessor's time).
        """
        return self._shard(topic).offset_at_time(topic, ts)

    def topics(self) -> list[str]:
        """Every topic with records or trim history, sorted."""
        return sorted(topic for shard in self.shards for topic in shard.topics())

    def subscribe_appends(self, callback: AppendCallback) -> None:
        """Call ``callback(records)`` with every newly durable batch's records (no duplicates).

        Ordering guarantee, per shard: a batch's records become visible to
        ``read()``/``head()`` and are passed to the callbacks, in offset order, in
        the same synchronous step of the event loop, after its fdatasync returned and
        before any ``append()`` of that batch returns. So between two steps of the
        loop, ``read()`` returns exactly the records already announced. A reader
        that calls ``read()`` and starts taking callback records with offsets above
        the last one read, with no ``await`` in between, misses nothing and sees
        nothing twice. A callback must not block or keep the list; an exception it
        raises is logged.
        """
        self._subscribers.append(callback)

    def unsubscribe_appends(self, callback: AppendCallback) -> None:
        """Stop calling ``callback``. Raises ``ValueError`` if it was not subscribed."""
        self._subscribers.remove(callback)

    async def trim(self, now_ms: int | None = None) -> int:
        """Apply retention now (at time ``now_ms``, default the wall clock); return records removed.

        Removed records disappear from ``read()`` at once and ``trimmed_through``
        advances; segment files whose records are all removed are deleted. Raises
        ``OSError`` if the trim checkpoint cannot be written (nothing is removed then).
        """
        now = int(time.time() * 1000) if now_ms is None else now_ms
        removed = 0
        for shard in self.shards:
            removed += await shard.trim(self._retention, now)
        return removed

    async def _trim_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.trim()
            except Exception:
                log.exception("retention trim failed; retrying in %s s", interval)

    async def close(self) -> None:
        """Finish queued appends, stop the background trim, close every file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._trimmer is not None:
            self._trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimmer
        for shard in self.shards:
            await shard.close()
        self._fs.unlock(self._lock)
