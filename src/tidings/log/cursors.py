"""Durable-consumer cursors: one append-only journal, one fdatasync per save.

    <directory>/cursors/journal.log     Batch*, appended by save_many

    Batch =>
      length   uint32     bytes of payload
      crc      uint32     zlib.crc32 of payload
      payload  length bytes: msgpack {key: state, ...}, the states saved together

The latest batch that mentions a key holds its cursor. Cursors are saved in
batches a few times a second, and with a thousand busy consumers almost all of
them are dirty every time: one append and one fdatasync per batch instead of a
file (and an fsync) per consumer is what keeps that affordable (issue #5, W3:
per-consumer files spent most of the server's CPU and stalled the log's fsyncs).

On open the journal is replayed; a torn or damaged batch at the tail (a crash
during a save) is cut off, so a crash leaves each cursor as of the last complete
save. When the journal has grown to four times the size of the live states (and
at least 1 MiB), it is rewritten with only those: a temporary file, fsync,
rename over the journal, fsync of the directory.

Cursor files of the earlier format (``<sha256(key)[:32]>.cur``, one per key) are
still read when the journal has nothing for a key.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import msgspec

from tidings.errors import StorageError

_HEADER = struct.Struct("<II")
COMPACT_MIN_BYTES = 1 << 20
MAX_BATCH_BYTES = 1 << 30


class CursorFile(msgspec.Struct):
    """A cursor file of the earlier format: one per key."""

    key: str
    state: Any


class CursorStore:
    def __init__(self, directory: Path) -> None:
        """Open (and replay) the journal in ``directory / "cursors"``. Raises ``StorageError``."""
        self.directory = directory / "cursors"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "journal.log"
        self._latest: dict[str, Any] = {}
        self._lock = threading.Lock()  # a save still running in its thread when the final one starts
        self._size = self._replay()
        self._live = self._size

    def _replay(self) -> int:
        """Read every complete batch into ``_latest``; cut a torn tail. Returns the journal's size."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if length > MAX_BATCH_BYTES or end > len(data):
                break
            payload = data[pos + _HEADER.size : end]
            if zlib.crc32(payload) != crc:
                break
            try:
                self._latest.update(msgspec.msgpack.decode(payload, type=dict[str, Any]))
            except msgspec.DecodeError:
                break
            pos = end
        if pos < len(data):  # a save that did not complete: it never happened
            with open(self.path, "r+b") as fh:
                fh.truncate(pos)
                os.fsync(fh.fileno())
        return pos

    def load(self, key: str) -> Any | None:
        """The saved state for ``key`` as plain data, or None. Raises ``StorageError`` if unreadable."""
        if key in self._latest:
            return self._latest[key]
        return self._load_file(key)

    def _load_file(self, key: str) -> Any | None:
        path = self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".cur")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            saved = msgspec.msgpack.decode(data, type=CursorFile)
        except msgspec.DecodeError as exc:
            raise StorageError(f"cursor file {path} is unreadable: {exc}") from None
        if saved.key != key:
            raise StorageError(f"cursor file {path} belongs to {saved.key!r}, not {key!r}")
        return saved.state

    def save_many(self, states: dict[str, Any]) -> None:
        """Replace the saved states of these keys, durably (blocking; run in a thread).

        Raises ``OSError`` when the write or the sync fails; the states are then not saved.
        """
        if not states:
            return
        with self._lock:
            self._append(states)

    def _append(self, states: dict[str, Any]) -> None:
        payload = msgspec.msgpack.encode(states)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, _HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._latest.update(states)
        self._size += _HEADER.size + len(payload)
        if self._size > max(COMPACT_MIN_BYTES, 4 * self._live):
            self._compact()

    def _compact(self) -> None:
        payload = msgspec.msgpack.encode(self._latest)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._size = self._live = _HEADER.size + len(payload)
