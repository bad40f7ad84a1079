"""The writer thread of one shard: one write() and one fdatasync() per batch, off the event loop.

The shard (in the event loop) hands the writer one encoded batch at a time with
``write()`` and gets the answer as a callback in the loop: ``on_written(segment,
position, seconds)`` once the batch is durable, or ``on_failed(exc)`` once a write
or sync failed. After a failure the writer writes nothing more: batches handed to
it later are dropped unwritten, and nothing more is reported (the shard has failed).

Why a thread of our own instead of ``loop.run_in_executor``: a hand-off through a
``ThreadPoolExecutor`` (a concurrent future, its condition variable, the chained
asyncio future, a task waking up) measured 110-160 µs of wall time and 65-80 µs of
CPU per round trip on the project's 2-core machine; a ``SimpleQueue`` and one
``call_soon_threadsafe`` per batch measured 40-55 µs and 34 µs, mostly the two
wake-ups in the kernel (docs/storage.md, "Writing").

Only this thread touches the active (last) segment's ``size`` and ``allocated``
and decides when to roll over to a new segment; the shard learns about a new
segment from ``on_written``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue

from tidings.log.files import FileSystem
from tidings.log.segment import Segment

log = logging.getLogger(__name__)

WrittenCallback = Callable[[Segment, int, float], None]
FailedCallback = Callable[[BaseException], None]


class Writer:
    """One thread writing one shard's batches in order. ``start()``, ``write()``..., ``stop()``."""

    def __init__(
        self,
        name: str,
        fs: FileSystem,
        directory: Path,
        active: Segment,
        *,
        segment_bytes: int,
        loop: asyncio.AbstractEventLoop,
        on_written: WrittenCallback,
        on_failed: FailedCallback,
    ) -> None:
        self._fs = fs
        self._directory = directory
        self._active = active
        self._segment_bytes = segment_bytes
        self._loop = loop
        self._on_written = on_written
        self._on_failed = on_failed
        self._queue: SimpleQueue[tuple[bytes, int] | None] = SimpleQueue()
        self._broken = False
        # A daemon: a sync that never returns must not keep a stopping server alive.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def write(self, data: bytes, first_offset: int) -> None:
        """Write and sync the batch ``data`` (whose first record has ``first_offset``).

        Call from the event loop, and only once the previous batch was reported:
        the answer is a call of ``on_written`` or ``on_failed`` in the loop.
        """
        self._queue.put((data, first_offset))

    def stop(self) -> None:
        """Let the thread end after the batches handed to it. Then ``join()``."""
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (blocking: call it from a thread, not the loop)."""
        self._thread.join(timeout)

    def _run(self) -> None:
        post = self._loop.call_soon_threadsafe
        while (item := self._queue.get()) is not None:
            if self._broken:
                continue  # the shard has failed: nothing more reaches the disk
            data, first_offset = item
            started = time.perf_counter()
            try:
                segment, position = self._write(data, first_offset)
            except BaseException as exc:  # the batch's durability is unknown: fatal
                self._broken = True
                self._post(post, self._on_failed, exc)
                continue
            self._post(post, self._on_written, segment, position, time.perf_counter() - started)
            if segment.needs_space(self._segment_bytes):
                # Off the acknowledgement path: the batch was reported already, and
                # appends queue meanwhile and form a larger next batch.
                try:
                    segment.preallocate(self._segment_bytes)
                except BaseException as exc:
                    self._broken = True
                    self._post(post, self._on_failed, exc)

    @staticmethod
    def _post(post: Callable[..., object], callback: Callable[..., None], *args: object) -> None:
        try:
            post(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting for the answer
            log.debug("writer: event loop closed, dropping %r", callback)

    def _write(self, data: bytes, first_offset: int) -> tuple[Segment, int]:
        # The old segment is sealed, and the new one's directory entry synced,
        # before the batch is written to it.
        segment = self._active
        if segment.size > 0 and segment.size + len(data) > self._segment_bytes:
            segment.seal()
            segment = Segment.create(self._fs, self._directory, first_offset)
            self._fs.fsync_dir(self._directory)
            self._active = segment
        return segment, segment.append(data)
