"""Shared helpers for the durable log tests: real files, real fsync, FileSystem subclasses."""

from __future__ import annotations

import threading
from pathlib import Path

from tidings.log import FileSystem


class CountingFileSystem(FileSystem):
    """Real files; counts fdatasync calls."""

    def __init__(self) -> None:
        self.syncs = 0
        self._lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        with self._lock:
            self.syncs += 1


class HeldFileSystem(FileSystem):
    """Real files; once ``armed``, the next fdatasync waits until ``release`` is set."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(10)
        super().fdatasync(fd)


class FailingFileSystem(FileSystem):
    """Real files; once ``failing`` is set, every fdatasync raises EIO after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.failing = False
        self.delay = delay
        self.failed_syncs = 0

    def fdatasync(self, fd: int) -> None:
        if self.failing:
            if self.delay:
                threading.Event().wait(self.delay)
            self.failed_syncs += 1
            raise OSError(5, "Input/output error (injected)")
        super().fdatasync(fd)


def segment_files(directory: Path, shard: int = 0) -> list[Path]:
    return sorted((directory / f"shard-{shard:03d}").glob("*.log"))


class OneShardFailingFileSystem(FileSystem):
    """Real files; once ``failing`` is set, fdatasync fails at once for files under ``bad`` and
    succeeds after ``delay`` seconds elsewhere (so other shards have a batch in flight)."""

    def __init__(self, bad: str, delay: float) -> None:
        self.bad = bad
        self.delay = delay
        self.failing = False
        self._paths: dict[int, str] = {}

    def open(self, path: Path, *, create: bool) -> int:
        fd = super().open(path, create=create)
        self._paths[fd] = str(path)
        return fd

    def fdatasync(self, fd: int) -> None:
        if self.failing:
            if self.bad in self._paths.get(fd, ""):
                raise OSError(5, "Input/output error (injected)")
            threading.Event().wait(self.delay)
        super().fdatasync(fd)
