"""One shard of the log: a single writer task with group commit, the index, retention.

Appends are encoded and queued in the event loop. Whenever the shard's writer
thread (``writer.py``) is idle, the shard takes everything queued, frames it as one
batch, and hands it to that thread for one write() and one fdatasync(). Appends that
arrive meanwhile queue up and form the next batch: the slower the disk, the larger
the batches. The first batch after an idle spell starts at the end of the loop turn
in which its first append arrived, so every append read in that turn joins it; a
batch that queued during a sync waits two more loop turns, so that the publishes
set free by that sync's acks join it too (``_gather``).

When a batch is durable, in one synchronous step of the event loop the shard (1)
indexes its records, so read() and head() see them, (2) calls every append
subscriber with its records in offset order, and (3) calls each append's ``done``.
When the write or fdatasync fails, nothing of the batch is indexed, every pending
and later append raises ``SyncFailed``, and ``on_fatal`` is called.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import Callable
from functools import partial
from pathlib import Path

import msgspec

from tidings.errors import CorruptLog, RetryLater, StorageError, SyncFailed
from tidings.log.checkpoint import Checkpoint
from tidings.log.files import FileSystem
from tidings.log.index import TopicIndex
from tidings.log.record import BATCH_HEADER, decode_record, encode_batch, encode_record
from tidings.log.segment import Segment, parse_segment_name, segment_name
from tidings.log.types import AppendResult, RetentionPolicy, StoredRecord
from tidings.log.writer import Writer

log = logging.getLogger(__name__)

#: Called with the records of each durable batch, in offset order.
AppendCallback = Callable[[list[StoredRecord]], None]
#: Called once with an append's result, or with the exception that failed it. It runs
#: inside the shard's commit step: it must not block, and an ``Exception`` it raises is
#: logged and swallowed.
AppendDone = Callable[[AppendResult | BaseException], None]


class ShardStats:
    """Counters of the writer; ``syncs`` counts fdatasync calls of batches.

    ``observer``, if set, is called with (write+sync seconds, records) after each batch.
    """

    __slots__ = ("max_batch", "observer", "records", "syncs")

    def __init__(self) -> None:
        self.syncs = 0
        self.records = 0
        self.max_batch = 0
        self.observer: Callable[[float, int], None] | None = None

    @property
    def mean_batch(self) -> float:
        return self.records / self.syncs if self.syncs else 0.0


#: loop turns the next batch waits after a sync for what its acks set free (``Shard._gather``)
GATHER_ROUNDS = 4


class _Pending(msgspec.Struct, gc=False):
    """A record on its way to disk: what subscribers get once it is durable, its encoding, ``done``.

    Untracked by the garbage collector (fewer young objects to walk per append):
    ``done`` may reach the caller's objects, but none of them refers back to it.
    """

    stored: StoredRecord
    record: bytes
    done: AppendDone


class Shard:
    """One shard directory. Create in the event loop, ``await open()``, ``await close()`` at the end."""

    def __init__(
        self,
        number: int,
        directory: Path,
        fs: FileSystem,
        *,
        segment_bytes: int,
        subscribers: list[AppendCallback],
        on_fatal: Callable[[BaseException], None],
        retention: Callable[[str], RetentionPolicy] | None = None,
    ) -> None:
        self.number = number
        self.directory = directory
        self.stats = ShardStats()
        self._fs = fs
        self._segment_bytes = segment_bytes
        self._subscribers = subscribers
        self._on_fatal = on_fatal
        self._retention = retention
        self._topics: dict[str, TopicIndex] = {}
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        self._next = 1
        self._pending: list[_Pending] = []
        self._batch: list[_Pending] = []  # being written
        self._inflight: dict[tuple[str, str], int] = {}
        self._dup_waiters: list[tuple[int, AppendDone]] = []
        self._failed: BaseException | None = None
        self._closing = False
        #: a batch is scheduled or with the writer thread; the next one waits for it
        self._writing = False
        self._drained: asyncio.Future[None] | None = None  # close() waits for the last batch
        self._trim_lock = asyncio.Lock()
        self._writer: Writer | None = None
        self._loop = asyncio.get_running_loop()

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Recover the shard from its files and start its writer. Raises ``CorruptLog``."""
        try:
            await asyncio.to_thread(self._recover)
        except BaseException:
            self._close_files()
            raise
        self._writer = Writer(
            f"tidings-log-writer-{self.number}",
            self._fs,
            self.directory,
            self._segments[-1],
            segment_bytes=self._segment_bytes,
            loop=self._loop,
            on_written=self._written,
            on_failed=self._write_failed,
        )
        self._writer.start()

    async def close(self) -> None:
        """Write what is queued, stop the writer, and close the files."""
        self._closing = True
        writer = self._writer
        if writer is not None:
            if self._writing and self._failed is None:
                self._drained = self._loop.create_future()
                await self._drained
            writer.stop()
            await asyncio.to_thread(writer.join)
        async with self._trim_lock:
            self._close_files()

    def _close_files(self) -> None:
        for segment in self._segments:
            segment.close()
        self._segments.clear()
        self._bases.clear()

    def _recover(self) -> None:
        fs, directory = self._fs, self.directory
        fs.makedirs(directory)
        checkpoint = Checkpoint.load(fs, directory)
        for topic, offset in checkpoint.trimmed.items():
            self._topics[topic] = TopicIndex(offset)
        bases = sorted(b for b in map(parse_segment_name, fs.listdir(directory)) if b is not None)
        newest = 0
        for i, base in enumerate(bases):
            seg_path = directory / segment_name(base)
            if base <= newest:
                raise CorruptLog(
                    f"{seg_path}: segment starts below the previous one's records", str(seg_path), 0
                )
            segment, infos = Segment.recover(
                fs, seg_path, base, last=i == len(bases) - 1, after_offset=max(newest, base - 1)
            )
            self._segments.append(segment)
            self._bases.append(base)
            for info in infos:
                index = self._topics.get(info.topic)
                if index is None:
                    index = self._topics[info.topic] = TopicIndex()
                if info.offset > index.trimmed_through:
                    index.add(info.offset, info.position, info.ts, info.size, info.id)
                    segment.live += 1
            if infos:
                newest = infos[-1].offset
        floor = max(newest, checkpoint.floor, bases[-1] - 1 if bases else 0)
        self._next = floor + 1
        if not self._segments:
            self._segments.append(Segment.create(fs, directory, self._next))
            self._bases.append(self._next)
            fs.fsync_dir(directory)

    # -- appending -------------------------------------------------------------

    def _remembered(self, topic: str, index: TopicIndex, original: int, ts: int) -> bool:
        """Whether ``original`` still counts for dedup at time ``ts`` (its topic's dedup window)."""
        window = self._retention(topic).dedup_window_ms if self._retention is not None else None
        return window is None or ts - index.ts_of(original) <= window

    async def append(self, topic: str, msg_id: str, ts: int, payload: bytes) -> AppendResult:
        """Store a record; return once it is durable. See ``Store.append``."""
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        self.submit(topic, msg_id, ts, payload, partial(settle, future))
        return await future

    def submit(
        self, topic: str, msg_id: str, ts: int, payload: bytes, done: AppendDone, max_queue: int | None = None
    ) -> None:
        """Queue a record; ``done`` gets its result once it is durable. See ``Store.submit``.

        The offset is assigned now, so records submitted in one order are stored
        in that order. No future and no task: this is the gateway's fast path, and
        ``done`` is called straight from the commit (never before this returns).
        Raises ``RetryLater`` if ``max_queue`` appends are queued already.
        """
        if self._failed is not None or self._closing:
            self._refuse()
        if max_queue is not None and len(self._pending) >= max_queue:
            raise RetryLater(f"the log shard of {topic!r} has {max_queue} appends queued", 20)
        index = self._topics.get(topic)
        if index is not None:
            original = index.dedup.get(msg_id)
            if original is not None and self._remembered(topic, index, original, ts):
                self._loop.call_soon(done, AppendResult(original, True))
                return
        key = (topic, msg_id)
        inflight = self._inflight
        if key in inflight:
            # The original is still being written: answer once it is durable.
            self._dup_waiters.append((inflight[key], done))
            return
        offset = self._next
        record = encode_record(offset, ts, topic.encode(), msg_id.encode(), payload)
        self._next = offset + 1
        self._pending.append(_Pending(StoredRecord(offset, topic, msg_id, ts, payload), record, done))
        inflight[key] = offset
        if not self._writing:
            # At the end of this loop turn, so that every append of the turn joins the batch.
            self._writing = True
            self._loop.call_soon(self._start_batch)

    def _refuse(self) -> None:
        if self._failed is not None:
            raise SyncFailed(f"shard {self.number} stopped after a failed sync: {self._failed}")
        raise StorageError("the store is closed")

    def _start_batch(self) -> None:
        """Hand everything queued to the writer thread as one batch (or go idle)."""
        if not self._pending or self._failed is not None:
            self._idle()
            return
        batch = self._batch = self._pending
        self._pending = []
        try:
            data = encode_batch([p.record for p in batch])
            assert self._writer is not None
            self._writer.write(data, batch[0].stored.offset)
        except Exception as exc:  # a bug here must not leave appends waiting forever
            log.exception("shard %d: handing a batch to the writer failed", self.number)
            self._fail(exc, batch)

    def _idle(self) -> None:
        self._writing = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _written(self, segment: Segment, position: int, seconds: float) -> None:
        """The writer thread made the current batch durable (called in the loop)."""
        batch = self._batch
        try:
            if self.stats.observer is not None:
                self.stats.observer(seconds, len(batch))
            if segment is not self._segments[-1]:
                self._segments.append(segment)
                self._bases.append(segment.base)
            self._commit(batch, segment, position)
        except Exception as exc:  # a bug here must not leave appends waiting forever
            log.exception("shard %d: committing a batch failed", self.number)
            self._fail(exc, batch)
            return
        self._batch = []
        # Everything that queued during this sync goes next, after GATHER_ROUNDS more polls.
        self._gather(GATHER_ROUNDS)

    def _gather(self, rounds: int) -> None:
        """Start the next batch once the event loop has polled for I/O ``rounds`` more times.

        What queued during a sync is mostly the first of what is coming: the acks of the
        batch just made durable leave at the end of this loop turn, and the publishes
        they set free are in the sockets a poll or two later. Letting them join nearly
        halves the syncs per message under load (each costs ~200 µs of the server's CPU,
        mostly in the writer thread); with nothing queued there is nothing to wait for,
        and the shard goes idle at once (docs/storage.md, docs/performance.md).
        """
        if rounds <= 0 or not self._pending or self._failed is not None:
            self._start_batch()
        else:
            self._loop.call_soon(self._gather, rounds - 1)

    def _write_failed(self, exc: BaseException) -> None:
        """The writer thread's write or fdatasync failed (called in the loop): fatal."""
        self._fail(exc, self._batch)

    def _commit(self, batch: list[_Pending], segment: Segment, position: int) -> None:
        topics, inflight = self._topics, self._inflight
        pos = position + BATCH_HEADER.size
        for p in batch:
            stored = p.stored
            index = topics.get(stored.topic)
            if index is None:
                index = topics[stored.topic] = TopicIndex()
            size = len(p.record)
            index.add(stored.offset, pos, stored.ts, size, stored.id)
            pos += size
            inflight.pop((stored.topic, stored.id), None)  # gone already if the store failed meanwhile
        segment.live += len(batch)
        stats = self.stats
        stats.syncs += 1
        stats.records += len(batch)
        stats.max_batch = max(stats.max_batch, len(batch))
        if self._subscribers:
            records = [p.stored for p in batch]
            for callback in tuple(self._subscribers):
                try:
                    callback(records)
                except Exception:
                    log.exception("append subscriber %r failed", callback)
        for p in batch:
            try:  # _tell, inline: this runs for every record
                p.done(AppendResult(p.stored.offset, False))
            except Exception:
                log.exception("append callback %r failed", p.done)
        if self._dup_waiters:
            durable = batch[-1].stored.offset
            waiters, self._dup_waiters = self._dup_waiters, []  # a done may queue new ones
            waiting = []
            for original, done in waiters:
                if original > durable:
                    waiting.append((original, done))
                else:
                    _tell(done, AppendResult(original, True))
            self._dup_waiters[:0] = waiting

    def _fail(self, exc: BaseException, batch: list[_Pending]) -> None:
        self.fail(exc)
        self._batch = []
        self._idle()
        log.critical("shard %d: write or fdatasync failed, stopping: %r", self.number, exc)
        self._on_fatal(exc)
        for p in batch:
            _tell(p.done, SyncFailed(f"shard {self.number}: write or fdatasync failed: {exc}"))

    def fail(self, exc: BaseException) -> None:
        """Refuse every queued and later append with ``SyncFailed``."""
        if self._failed is None:
            self._failed = exc
        pending, self._pending = self._pending, []
        waiters = [p.done for p in pending] + [done for _, done in self._dup_waiters]
        self._dup_waiters = []
        self._inflight.clear()
        for done in waiters:
            _tell(done, SyncFailed(f"shard {self.number} stopped after a failed sync: {exc}"))

    # -- reading ---------------------------------------------------------------

    def read(self, topic: str, after: int, limit: int) -> list[StoredRecord]:
        """Retained records of ``topic`` with offsets above ``after``, oldest first. Raises ``CorruptLog``."""
        index = self._topics.get(topic)
        if index is None or limit <= 0:
            return []
        offsets, positions, sizes = index.offsets, index.positions, index.sizes
        k = index.after(after)
        stop = min(len(offsets), k + limit)
        out: list[StoredRecord] = []
        while k < stop:
            s = bisect_right(self._bases, offsets[k]) - 1
            segment = self._segments[s]
            next_base = self._bases[s + 1] if s + 1 < len(self._bases) else None
            start = positions[k]
            end = start + sizes[k]
            m = k + 1
            # One pread for a run of records that lie back to back in the same segment.
            while m < stop and positions[m] == end and (next_base is None or offsets[m] < next_base):
                end += sizes[m]
                m += 1
            buf = segment.pread(end - start, start)
            path = str(segment.path)
            pos = 0
            for j in range(k, m):
                record, pos = decode_record(buf, pos, path, start)
                if record.offset != offsets[j] or record.topic != topic:
                    where = start + pos
                    raise CorruptLog(f"{path}: record at byte {where} is not the indexed one", path, where)
                out.append(StoredRecord(record.offset, record.topic, record.id, record.ts, record.payload))
            k = m
        return out

    def head(self, topic: str) -> int:
        index = self._topics.get(topic)
        return index.head if index is not None else 0

    @property
    def queue_depth(self) -> int:
        """Appends waiting for the next write."""
        return len(self._pending)

    def count(self, topic: str) -> int:
        index = self._topics.get(topic)
        return len(index.offsets) if index is not None else 0

    def trimmed_through(self, topic: str) -> int:
        index = self._topics.get(topic)
        return index.trimmed_through if index is not None else 0

    def offset_at_time(self, topic: str, ts: int) -> int:
        index = self._topics.get(topic)
        return index.offset_at_time(ts) if index is not None else 0

    def topics(self) -> list[str]:
        return list(self._topics)

    # -- retention -------------------------------------------------------------

    async def trim(self, retention: Callable[[str], RetentionPolicy], now_ms: int) -> int:
        """Apply retention; return how many records it removed. Raises ``OSError`` on I/O failure.

        The new trim points are made durable (``trimmed.json``) before any record
        becomes invisible, and files are deleted only after that.
        """
        async with self._trim_lock:
            if self._closing:
                return 0
            cuts: dict[str, int] = {}
            for topic, index in self._topics.items():
                k = index.excess(retention(topic), now_ms)
                if k:
                    cuts[topic] = index.offsets[k - 1]
            if cuts:
                trimmed = {t: i.trimmed_through for t, i in self._topics.items() if i.trimmed_through}
                trimmed.update(cuts)
                checkpoint = Checkpoint(floor=self._next - 1, trimmed=trimmed)
                await asyncio.to_thread(checkpoint.save, self._fs, self.directory)
            removed = 0
            for topic, offset in cuts.items():
                for dropped in self._topics[topic].drop_through(offset):
                    self._segments[bisect_right(self._bases, dropped) - 1].live -= 1
                    removed += 1
            dead = [s for s in self._segments[:-1] if s.live <= 0]
            if dead:
                self._segments = [s for s in self._segments if s.live > 0 or s is self._segments[-1]]
                self._bases = [s.base for s in self._segments]
                await asyncio.to_thread(self._delete, dead)
            return removed

    def _delete(self, segments: list[Segment]) -> None:
        for segment in segments:
            segment.close()
            self._fs.remove(segment.path)
        self._fs.fsync_dir(self.directory)


def _tell(done: AppendDone, outcome: AppendResult | BaseException) -> None:
    """Call one append's ``done``; a callback that raises must not keep the others from theirs."""
    try:
        done(outcome)
    except Exception:
        log.exception("append callback %r failed", done)


def settle(future: asyncio.Future[AppendResult], outcome: AppendResult | BaseException) -> None:
    """Resolve ``future`` with an append's outcome (``partial(settle, future)`` is an ``AppendDone``)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
