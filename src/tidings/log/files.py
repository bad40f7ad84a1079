"""The file seam: every system call the durable log makes goes through ``FileSystem``.

The default implementation is a thin layer over ``os``. It exists so that a
fault-injection layer can sit behind the log without the log knowing: a subclass
can drop unsynced writes to simulate power loss, make ``fdatasync`` fail, or count
calls (the tests count syncs to prove that group commit batches).

Files are plain integer descriptors. ``pwrite``, ``fdatasync`` and ``truncate`` are called from a
shard's writer thread, everything else from the event loop thread; an
implementation must be safe for that (the OS one is).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tidings.errors import StorageError


class FileSystem:
    """Real OS files. Subclass and override to inject faults."""

    def makedirs(self, path: Path) -> None:
        """Create ``path`` and its parents if missing."""
        path.mkdir(parents=True, exist_ok=True)

    def listdir(self, path: Path) -> list[str]:
        """Names of the entries of the directory ``path``."""
        return os.listdir(path)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def open(self, path: Path, *, create: bool) -> int:
        """Open ``path`` for reading and writing; return its descriptor.

        Raises ``FileNotFoundError`` when it is missing and ``create`` is false.
        A created file is not durable until ``fsync_dir`` of its directory.
        """
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT
        return os.open(path, flags, 0o644)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def pwrite(self, fd: int, data: bytes, position: int) -> None:
        """Write all of ``data`` at ``position`` (looping over short writes)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, position)
            view = view[written:]
            position += written

    def pread(self, fd: int, size: int, position: int) -> bytes:
        """Read up to ``size`` bytes at ``position``; fewer only at end of file."""
        return os.pread(fd, size, position)

    def fdatasync(self, fd: int) -> None:
        """Make the data written to ``fd`` durable. Raises ``OSError`` on failure."""
        os.fdatasync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def remove(self, path: Path) -> None:
        os.unlink(path)

    def fsync_dir(self, path: Path) -> None:
        """Make the creation, removal or renaming of entries of ``path`` durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Replace ``path`` by ``data`` all at once, durably (temp file, fsync, rename, fsync dir)."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self.fsync_dir(path.parent)

    def read_all(self, path: Path) -> bytes:
        return path.read_bytes()

    def lock(self, path: Path) -> int:
        """Take an exclusive advisory lock on ``path``; return the descriptor to ``unlock``.

        Raises ``StorageError`` when another process (or another ``Store``) holds it.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(f"{path} is locked: another store has this data directory open") from None
        return fd

    def unlock(self, fd: int) -> None:
        os.close(fd)
