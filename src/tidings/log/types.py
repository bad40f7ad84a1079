"""The values the durable log hands to its callers."""

from __future__ import annotations

import msgspec


class AppendResult(msgspec.Struct, frozen=True):
    """The answer to an append: the record's offset, and whether it was already stored."""

    offset: int
    duplicate: bool


class StoredRecord(msgspec.Struct, frozen=True, gc=False):
    """One durable record. ``payload`` is opaque; ``ts`` is ms since the epoch.

    Not tracked by the garbage collector (``gc=False``): it holds only strings,
    bytes and ints, so it can be in no reference cycle.
    """

    offset: int
    topic: str
    id: str
    ts: int
    payload: bytes


class RetentionPolicy(msgspec.Struct, frozen=True):
    """How much of one topic to keep; None means no limit on that axis.

    ``max_bytes`` counts encoded record bytes (payload plus topic, id and 28 bytes).
    """

    max_messages: int | None = None
    max_bytes: int | None = None
    max_age_ms: int | None = None
    #: how long an id is remembered for dedup (None: as long as its record is retained)
    dedup_window_ms: int | None = None


UNLIMITED = RetentionPolicy()
