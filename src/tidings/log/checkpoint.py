"""A shard's trim checkpoint, ``trimmed.json``: what retention removed stays removed.

    {"floor": 52113, "trimmed": {"conv/team-7/task-42": 51800, ...}}

``trimmed`` maps each topic to the highest offset retention removed from it.
``floor`` is at least every offset ever assigned when it was written, so offsets
are never reused even after every segment holding them was deleted. The file is
replaced atomically (temp file, fsync, rename, fsync directory) before any record
becomes invisible, so a record reported as trimmed never comes back after a crash.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from tidings.errors import CorruptLog
from tidings.log.files import FileSystem

NAME = "trimmed.json"


class Checkpoint(msgspec.Struct):
    floor: int
    trimmed: dict[str, int]

    @classmethod
    def load(cls, fs: FileSystem, directory: Path) -> Checkpoint:
        """The shard's checkpoint, or an empty one. Raises ``CorruptLog`` if it is unreadable."""
        path = directory / NAME
        if not fs.exists(path):
            return cls(floor=0, trimmed={})
        try:
            return msgspec.json.decode(fs.read_all(path), type=cls)
        except msgspec.DecodeError as exc:
            raise CorruptLog(f"{path}: unreadable checkpoint: {exc}", str(path), 0) from None

    def save(self, fs: FileSystem, directory: Path) -> None:
        """Replace the checkpoint durably. Blocking; raises ``OSError``."""
        fs.write_atomic(directory / NAME, msgspec.json.encode(self))
