"""Durable-consumer cursors: one small file per consumer, replaced atomically.

    <directory>/cursors/<sha256(key)[:32]>.cur    msgpack {"key": str, "state": CursorState}

A save writes a temporary file, fsyncs it, renames it over the old one and
fsyncs the directory, so a crash leaves either the old or the new cursor,
never a torn one. Cursors are saved in batches a few times a second; a crash
loses at most the acknowledgements since the last save, which are then
redelivered (at-least-once).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import msgspec

from tidings.errors import StorageError


class CursorFile(msgspec.Struct):
    key: str
    state: Any


class CursorStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory / "cursors"
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".cur")

    def load(self, key: str) -> Any | None:
        """The saved state for ``key`` as plain data, or None. Raises ``StorageError`` if unreadable."""
        path = self._path(key)
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
        """Replace the saved states of these keys, durably (blocking; run in a thread)."""
        for key, state in states.items():
            path = self._path(key)
            tmp = path.with_suffix(".tmp")
            data = msgspec.msgpack.encode(CursorFile(key, state))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
