"""A fault layer behind the log's ``FileSystem``: simulated power cuts and failing fsyncs.

Real files, real writes, real fsync; no root needed. The layer remembers every
change the log made to a file since that file's last successful ``fdatasync``
(the bytes a ``pwrite`` or ``truncate`` replaced, and the file's size before),
and which files were created since their directory was last synced.

**Power cut** (``power_cut()``, or SIGUSR1 to the process, see ``schedule_cut``): every unsynced
change is undone, newest first, so each file holds exactly what its last sync
made durable; files created since their directory's last sync are removed.
Then, with probability ``tear``, the newest unsynced write comes back *torn*:
a prefix of it, cut at a random byte. The process then ends at once with
status ``CUT_STATUS`` (like the machine losing power: no flush, no goodbye).
The page cache keeps the undone image, and that is what the next process sees.
The random choices come from a seeded generator, so a run is repeatable.

**Failing fsync** (``fail_syncs()``, or SIGUSR2): from then on every
``fdatasync`` fails with EIO, and the unsynced changes of that file are thrown
away first (what Linux does to dirty pages whose writeback failed). The log must
stop and must not acknowledge anything that was not synced.

What is not modelled: ``remove`` is durable at once (the log syncs the
directory right after); ``write_atomic`` and the consumer cursors (which do
not go through this interface) sync before they return, so a cut never
catches them half done.

A server process uses it through the test-only environment variable read by
``tidings serve`` (``TIDINGS_TEST_FILESYSTEM=tests.reliability.faultfs:from_env``);
``from_env`` reads ``TIDINGS_FAULT_SEED`` and ``TIDINGS_FAULT_TEAR``.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tidings.log import FileSystem

#: Exit status of a process whose power was cut.
CUT_STATUS = 99
ENV = {"TIDINGS_TEST_FILESYSTEM": "tests.reliability.faultfs:from_env"}


@dataclass
class _Change:
    seq: int
    path: Path
    position: int
    old: bytes  # the bytes that were there (for a truncate: the bytes cut off)
    old_size: int
    new: bytes  # what a pwrite wrote (empty for a truncate)


class FaultFileSystem(FileSystem):
    def __init__(self, seed: int = 0, tear: float = 0.5, *, signals: bool = False) -> None:
        self._rng = random.Random(seed)
        self._tear = tear
        self._lock = threading.Lock()
        self._paths: dict[int, Path] = {}
        self._changes: list[_Change] = []
        self._created: set[Path] = set()  # directory entry not yet synced
        self._seq = 0
        self._cutting = False
        self.failing = False
        self.cuts = 0
        self._armed = False
        if signals:
            signal.signal(signal.SIGUSR1, lambda *_: self.schedule_cut())
            signal.signal(signal.SIGUSR2, lambda *_: self.fail_syncs())

    # -- bookkeeping around the real calls ----------------------------------

    def open(self, path: Path, *, create: bool) -> int:
        existed = path.exists()
        fd = super().open(path, create=create)
        with self._lock:
            self._paths[fd] = path
            if not existed:
                self._created.add(path)
        return fd

    def pwrite(self, fd: int, data: bytes, position: int) -> None:
        with self._lock:
            self._wait_if_cutting()
            path = self._paths.get(fd)
            if path is not None:  # None: write_atomic's temporary file, synced before it returns
                size = os.fstat(fd).st_size
                old = os.pread(fd, max(0, min(len(data), size - position)), position)
                self._seq += 1
                self._changes.append(_Change(self._seq, path, position, old, size, bytes(data)))
            super().pwrite(fd, data, position)

    def truncate(self, fd: int, size: int) -> None:
        with self._lock:
            self._wait_if_cutting()
            old_size = os.fstat(fd).st_size
            old = os.pread(fd, max(0, old_size - size), size)
            self._seq += 1
            self._changes.append(_Change(self._seq, self._paths[fd], size, old, old_size, b""))
            super().truncate(fd, size)

    def fdatasync(self, fd: int) -> None:
        if self._armed:
            self.power_cut()  # the worst moment: the batch is written, its sync has not begun
        with self._lock:
            self._wait_if_cutting()
            mark = self._seq
            path = self._paths.get(fd)
            if self.failing:
                self._undo(lambda c: c.path == path)
                raise OSError(errno.EIO, "Input/output error (injected by FaultFileSystem)")
        super().fdatasync(fd)
        with self._lock:
            # A cut that began while the sync ran wins: this sync never returns, so
            # nothing it covered can be acknowledged after the cut undid it.
            self._wait_if_cutting()
            self._changes = [c for c in self._changes if c.path != path or c.seq > mark]

    def fsync_dir(self, path: Path) -> None:
        super().fsync_dir(path)
        with self._lock:
            self._created = {p for p in self._created if p.parent != path}

    def close(self, fd: int) -> None:
        with self._lock:
            self._paths.pop(fd, None)
        super().close(fd)

    # -- faults ---------------------------------------------------------------

    def fail_syncs(self) -> None:
        """Make every later ``fdatasync`` fail with EIO (losing that file's unsynced changes)."""
        self.failing = True

    def schedule_cut(self) -> None:
        """Cut the power now (half the time) or at the next ``fdatasync`` (within 0.2 s).

        A cut at a random instant mostly finds the writers idle, since the event
        loop is the busy part; a cut armed for the next sync always finds a batch
        that was written and not yet synced.
        """
        if self._rng.random() < 0.5:
            threading.Thread(target=self.power_cut, daemon=True).start()
            return
        self._armed = True
        timer = threading.Timer(0.2, self.power_cut)
        timer.daemon = True
        timer.start()

    def power_cut(self) -> None:
        """Lose what is unsynced (``lose_unsynced``) and end the process with ``CUT_STATUS``."""
        with self._lock:
            self._cutting = True
            undone, torn = self.lose_unsynced()
            print(
                f"faultfs: power cut: undid {undone} unsynced changes, tore the newest write at byte {torn}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(CUT_STATUS)

    def lose_unsynced(self) -> tuple[int, int]:
        """Undo every unsynced change and file creation; maybe tear the newest write back in.

        Returns how many changes were undone and the byte the newest write was torn
        at (0: not torn). Call with the lock held (``power_cut``) or in a unit test.
        """
        newest = next((c for c in reversed(self._changes) if c.new), None)
        undone = self._undo(lambda c: True)
        torn = 0
        if newest is not None and newest.path.exists() and self._rng.random() < self._tear:
            torn = self._rng.randrange(1, len(newest.new)) if len(newest.new) > 1 else 0
            if torn:
                _write(newest.path, newest.new[:torn], newest.position)
        for path in self._created:
            if path.exists():
                path.unlink()
        self._created.clear()
        return undone, torn

    def _undo(self, which: object) -> int:
        keep, undo = [], []
        for c in self._changes:
            (undo if which(c) else keep).append(c)  # type: ignore[operator]
        for c in reversed(undo):
            if not c.path.exists():
                continue
            if c.new:  # a pwrite: put the old bytes back, and the old size
                _write(c.path, c.old, c.position)
                if c.position + len(c.new) > c.old_size:
                    os.truncate(c.path, c.old_size)
            else:  # a truncate: grow back and restore what was cut off
                _write(c.path, c.old, c.position)
        self._changes = keep
        return len(undo)

    def _wait_if_cutting(self) -> None:
        if self._cutting:
            threading.Event().wait()  # the cut ends the process


def _write(path: Path, data: bytes, position: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, position)
    finally:
        os.close(fd)


def from_env() -> FaultFileSystem:
    """The factory ``tidings serve`` calls when ``TIDINGS_TEST_FILESYSTEM`` names it."""
    return FaultFileSystem(
        seed=int(os.environ.get("TIDINGS_FAULT_SEED", "0")),
        tear=float(os.environ.get("TIDINGS_FAULT_TEAR", "0.5")),
        signals=True,
    )
