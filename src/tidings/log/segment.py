"""One segment file of a shard: appending a batch, and recovery when it is opened.

A shard's log is a sequence of segment files named after the offset of their first
record (``00000000000000000001.log``), so a sorted directory listing is the log in
order. Only the last segment is appended to.

The last segment is preallocated ahead of its end with zeros (``PREALLOCATE``
bytes at a time, written and synced): an fdatasync of data written over allocated
blocks does not have to commit a file-size change to the file system journal,
which on ext4 halves the sync time and removes the tail latency of concurrent
syncs of several shards. When a segment is rolled over it is first truncated to
its last batch and synced ("sealed"), so only the last segment ends in zeros.

Recovery rule (the only place that decides what is damage):

* Batches are read from the start of the file while they validate (magic, header
  CRC, every record's length and CRC, offsets strictly increasing).
* Let ``P`` be the first position where a batch does not validate. If the segment
  is not the last one, any byte from ``P`` on is corruption: a segment is sealed
  only after its last batch was synced, so ``CorruptLog(path, P)``.
* In the last segment, zeros from ``P`` to the end are preallocated space: the log
  ends at ``P``.
* Otherwise the bytes from ``P`` are searched for any later valid batch with higher
  offsets. If one exists, the damage is in the middle of the log:
  ``CorruptLog(path, P)``. If none exists, the bytes from ``P`` are a torn tail (a
  batch whose write() or fdatasync() did not complete: partial, zero-filled or
  garbage) and the file is truncated to ``P`` and synced. Those records were never
  acknowledged, because batch k+1 is only written after batch k was synced.

A bit flip inside the last batch is indistinguishable from a torn write and is
handled as one. Damage is never skipped over silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tidings.errors import CorruptLog
from tidings.log.files import FileSystem
from tidings.log.record import RecordInfo, find_batch, parse_batch

SUFFIX = ".log"
#: Bytes of zeros preallocated at a time at the end of the last segment.
PREALLOCATE = 1024 * 1024
log = logging.getLogger(__name__)


def segment_name(base: int) -> str:
    return f"{base:020d}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The base offset of a segment file name, or None if ``name`` is not one."""
    stem = name.removesuffix(SUFFIX)
    if stem == name or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


class Segment:
    """An open segment file.

    ``size`` is where the log ends (the next batch goes there), ``allocated`` the
    size of the file including preallocated zeros, ``live`` the number of its
    records not yet trimmed.
    """

    __slots__ = ("allocated", "base", "fd", "fs", "live", "path", "size")

    def __init__(self, fs: FileSystem, path: Path, base: int, fd: int, size: int, allocated: int) -> None:
        self.fs = fs
        self.path = path
        self.base = base
        self.fd = fd
        self.size = size
        self.allocated = allocated
        self.live = 0

    @classmethod
    def create(cls, fs: FileSystem, directory: Path, base: int) -> Segment:
        """Create an empty segment. The caller must ``fsync_dir`` before writing to it."""
        path = directory / segment_name(base)
        return cls(fs, path, base, fs.open(path, create=True), 0, 0)

    def append(self, data: bytes) -> int:
        """Write one batch at the end of the log and fdatasync it; return its position.

        Raises ``OSError``. Blocking: called from the shard's writer thread.
        """
        position = self.size
        self.fs.pwrite(self.fd, data, position)
        self.size += len(data)
        self.allocated = max(self.allocated, self.size)
        self.fs.fdatasync(self.fd)
        return position

    def needs_space(self, limit: int) -> bool:
        """Whether the preallocated space ahead is short, and the segment may still grow."""
        return self.allocated - self.size < PREALLOCATE // 2 and self.allocated < limit

    def preallocate(self, limit: int) -> None:
        """Extend the file with zeros up to ``PREALLOCATE`` more bytes (not past ``limit``) and sync.

        Raises ``OSError``. Blocking: called from the shard's writer thread.
        """
        end = max(min(self.allocated + PREALLOCATE, limit), self.size)
        if end > self.allocated:
            self.fs.pwrite(self.fd, bytes(end - self.allocated), self.allocated)
            self.fs.fdatasync(self.fd)
            self.allocated = end

    def seal(self) -> None:
        """Cut the preallocated zeros off and sync: the segment is complete. Raises ``OSError``."""
        if self.allocated != self.size:
            self.fs.truncate(self.fd, self.size)
            self.fs.fdatasync(self.fd)
            self.allocated = self.size

    def pread(self, size: int, position: int) -> bytes:
        return self.fs.pread(self.fd, size, position)

    def close(self) -> None:
        self.fs.close(self.fd)

    @classmethod
    def recover(
        cls, fs: FileSystem, path: Path, base: int, *, last: bool, after_offset: int
    ) -> tuple[Segment, list[RecordInfo]]:
        """Open an existing segment, validate it, and truncate a torn tail (last segment only).

        Every record must have an offset above ``after_offset``. Raises ``CorruptLog``
        for damage that is not a torn tail (see the module docstring).
        """
        fd = fs.open(path, create=False)
        try:
            data = _read_fully(fs, fd, fs.size(fd))
            end = allocated = len(data)
            records: list[RecordInfo] = []
            names: dict[bytes, str] = {}
            pos = 0
            newest = after_offset
            while pos < end:
                parsed = parse_batch(data, pos, newest, names)
                if parsed is None:
                    break
                batch, pos = parsed
                records.extend(batch)
                newest = batch[-1].offset
            if pos < end and not (last and _zeros_from(data, pos)):
                if not last:
                    raise CorruptLog(
                        f"{path}: damaged batch at byte {pos} of a segment that is not the last",
                        str(path),
                        pos,
                    )
                later = find_batch(data, pos + 1, newest)
                if later is not None:
                    raise CorruptLog(
                        f"{path}: damaged batch at byte {pos}, followed by a valid batch at byte {later}",
                        str(path),
                        pos,
                    )
                log.warning("%s: truncating a torn tail of %d bytes at byte %d", path, end - pos, pos)
                fs.truncate(fd, pos)
                fs.fdatasync(fd)
                allocated = pos
        except BaseException:
            fs.close(fd)
            raise
        return cls(fs, path, base, fd, pos, allocated), records


def _zeros_from(data: bytes, pos: int) -> bool:
    """Whether ``data[pos:]`` is all zero bytes."""
    return len(data.rstrip(b"\0")) <= pos


def _read_fully(fs: FileSystem, fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    done = 0
    while done < size:
        chunk = fs.pread(fd, min(size - done, 1 << 24), done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)
