"""The embedded engine: one process, the sharded on-disk log, in-process fanout.

A durable message is stored as one log record whose payload is the envelope
without ``topic`` and ``offset`` (the record carries those), msgpack-encoded
as an array:

    [id, sender, ts, body, parent, lamport, headers]
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tidings.engine.base import (
    CommitCallback,
    CursorState,
    Engine,
    EphemeralCallback,
    PublishDone,
    PublishResult,
)
from tidings.errors import InvalidFrame
from tidings.log import FileSystem, RetentionPolicy, Store, StoredRecord
from tidings.log.cursors import CursorStore
from tidings.metrics import StorageFigures
from tidings.protocol.frames import Headers, Msg
from tidings.protocol.topics import matches

log = logging.getLogger("tidings.engine")

SWITCH_INTERVAL_S = 0.0005


class _Stored(msgspec.Struct, array_like=True):
    id: str
    sender: str
    ts: int
    body: Any
    parent: str | None
    lamport: int
    headers: Headers


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Stored)


def to_record_payload(msg: Msg) -> bytes:
    """Encode what a record carries beyond topic and offset. Raises ``InvalidFrame``."""
    try:
        # A tuple encodes as the same msgpack array as ``_Stored`` (array_like), without
        # building the struct first: this runs for every durable publish.
        return _encoder.encode((msg.id, msg.sender, msg.ts, msg.body, msg.parent, msg.lamport, msg.headers))
    except (OverflowError, TypeError, ValueError, RecursionError) as exc:
        raise InvalidFrame(f"body cannot be stored: {exc}") from None


def from_record(record: StoredRecord) -> Msg:
    s = _decoder.decode(record.payload)
    return Msg(
        topic=record.topic,
        id=s.id,
        sender=s.sender,
        ts=s.ts,
        body=s.body,
        offset=record.offset,
        parent=s.parent,
        lamport=s.lamport,
        headers=s.headers,
    )


class EmbeddedEngine(Engine):
    def __init__(
        self,
        data_dir: Path,
        shards: int | None = None,
        retention: Callable[[str], RetentionPolicy] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        trim_interval: float = 1.0,
        files: FileSystem | None = None,
        max_write_queue: int = 50_000,
    ) -> None:
        """``shards``: of a new log (None: the existing log's count, or ``Store``'s default, 1);
        ``files`` is the log's file interface (a fault-injecting one in tests);
        ``max_write_queue`` bounds each shard's queued appends (``RetryLater`` past it)."""
        self.max_write_queue = max_write_queue
        self.data_dir = data_dir
        self.shards = shards
        self._retention = retention
        self._on_fatal = on_fatal
        self._trim_interval = trim_interval
        self._files = files
        self._store: Store | None = None
        self._cursors = CursorStore(data_dir / "log")
        self._commit_callbacks: list[tuple[CommitCallback, Callable[[str], bool] | None]] = []
        self._ephemeral_callbacks: list[EphemeralCallback] = []
        self._figures = StorageFigures()

    @property
    def store(self) -> Store:
        assert self._store is not None, "start() first"
        return self._store

    async def start(self) -> None:
        # The log's write+fdatasync threads need the GIL for a few microseconds
        # per batch; with the default 5 ms switch interval they wait up to 5 ms
        # for a busy event loop to let go, which capped durable publishing at
        # ~9k acks/s with the CPU half idle. 0.5 ms: ~20k (docs/performance.md).
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._store = await Store.open(
            self.data_dir / "log",
            self.shards,
            retention=self._retention,
            on_fatal=self._fatal,
            trim_interval=self._trim_interval,
            files=self._files,
        )
        self._store.subscribe_appends(self._announce)
        for shard in self._store.shards:
            shard.stats.observer = self._observe_sync

    def _observe_sync(self, seconds: float, records: int) -> None:
        self._figures.syncs += 1
        self._figures.records += records
        self._figures.sync_seconds.observe(seconds)
        self._figures.batch_records.observe(records)

    def storage_figures(self) -> StorageFigures:
        figures = self._figures
        if self._store is not None:
            figures.queue_depth = sum(shard.queue_depth for shard in self._store.shards)
        return figures

    async def stop(self) -> None:
        if self._store is not None:
            await self._store.close()

    def _fatal(self, exc: BaseException) -> None:
        log.critical("durable storage failed; nothing more will be acknowledged: %s", exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _announce(self, records: list[StoredRecord]) -> None:
        """Hand a durable batch to the commit callbacks, record by record in offset order."""
        callbacks = self._commit_callbacks
        for record in records:
            msg: Msg | None = None
            for callback, interested in callbacks:
                try:  # one message's trouble must not cost the others theirs
                    if interested is None or interested(record.topic):
                        if msg is None:
                            msg = from_record(record)
                        callback(msg)
                except Exception:
                    log.exception("commit callback %r failed on %s", callback, record.topic)

    # -- publishing ---------------------------------------------------------

    async def publish(self, msg: Msg) -> PublishResult:
        return await self.store.append(msg.topic, msg.id, msg.ts, to_record_payload(msg))

    def submit(self, msg: Msg, done: PublishDone) -> None:
        store = self._store
        assert store is not None, "start() first"
        store.submit(msg.topic, msg.id, msg.ts, to_record_payload(msg), done, self.max_write_queue)

    def publish_ephemeral(self, msg: Msg) -> None:
        for callback in self._ephemeral_callbacks:
            callback(msg)

    # -- reading ------------------------------------------------------------

    # Each answers from memory or the page cache without suspending, so a
    # reader that awaits one sees no commit in between (the gateway does not rely on it).

    async def read(self, topic: str, after: int, limit: int = 1000) -> list[Msg]:
        return [from_record(r) for r in self.store.read(topic, after, limit)]

    async def head(self, topic: str) -> int:
        return self.store.head(topic)

    async def trimmed_through(self, topic: str) -> int:
        return self.store.trimmed_through(topic)

    async def offset_at_time(self, topic: str, ts_ms: int) -> int:
        return self.store.offset_at_time(topic, ts_ms)

    async def count(self, topic: str) -> int:
        return self.store.count(topic)

    async def topics(self, matching: str = ">") -> list[str]:
        return [t for t in self.store.topics() if matching == ">" or matches(matching, t)]

    # -- cursors ------------------------------------------------------------

    async def load_cursor(self, key: str) -> CursorState | None:
        saved = self._cursors.load(key)
        if saved is None or isinstance(saved, CursorState):
            return saved
        return msgspec.convert(saved, CursorState)

    async def save_cursors(self, states: dict[str, CursorState]) -> None:
        # The journal encodes the structs as they are (msgpack maps, as plain data
        # would be): no copy into dicts first, on the event loop, every save.
        await asyncio.to_thread(self._cursors.save_many, dict(states))
