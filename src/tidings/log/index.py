"""The in-memory index of one topic: where its retained records are, and its dedup map.

Rebuilt from the segments on open; kept in step with every commit and trim. Per
record it holds 28 bytes in arrays (offset, position, ts, size) plus the id string,
which the dedup map shares.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right

from tidings.log.types import RetentionPolicy


class TopicIndex:
    """Retained records of one topic, oldest first.

    ``ts`` holds each record's time made non-decreasing (a record older than its
    predecessor gets the predecessor's time), so time lookups and age retention can
    bisect and always cut a prefix.
    """

    __slots__ = ("bytes", "dedup", "head", "ids", "offsets", "positions", "sizes", "trimmed_through", "ts")

    def __init__(self, trimmed_through: int = 0) -> None:
        self.offsets = array("q")
        self.positions = array("q")
        self.ts = array("q")
        self.sizes = array("i")
        self.ids: list[str] = []
        self.dedup: dict[str, int] = {}
        self.bytes = 0
        self.trimmed_through = trimmed_through
        self.head = trimmed_through

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, position: int, ts: int, size: int, msg_id: str) -> None:
        """Index a durable record; its offset must be above ``head``."""
        ts_list = self.ts
        if ts_list and ts < ts_list[-1]:
            ts = ts_list[-1]
        self.offsets.append(offset)
        self.positions.append(position)
        ts_list.append(ts)
        self.sizes.append(size)
        self.ids.append(msg_id)
        self.dedup[msg_id] = offset
        self.bytes += size
        self.head = offset

    def ts_of(self, offset: int) -> int:
        """The (non-decreasing) time of the retained record at ``offset``."""
        return self.ts[bisect_left(self.offsets, offset)]

    def after(self, offset: int) -> int:
        """Index of the first record with an offset above ``offset``."""
        return bisect_right(self.offsets, offset)

    def offset_at_time(self, ts: int) -> int:
        """The offset just before the first record with time >= ``ts`` (``head`` if none)."""
        i = bisect_left(self.ts, ts)
        if i == len(self.offsets):
            return self.head
        return self.offsets[i - 1] if i else self.trimmed_through

    def excess(self, policy: RetentionPolicy, now_ms: int) -> int:
        """How many of the oldest records ``policy`` says to remove now."""
        n = len(self.offsets)
        cut = 0
        if policy.max_messages is not None and n > policy.max_messages:
            cut = n - max(policy.max_messages, 0)
        if policy.max_age_ms is not None:
            cut = max(cut, bisect_left(self.ts, now_ms - policy.max_age_ms))
        if policy.max_bytes is not None and self.bytes > policy.max_bytes:
            over = self.bytes - policy.max_bytes
            removed = sum(self.sizes[:cut])
            sizes = self.sizes
            while cut < n and removed < over:
                removed += sizes[cut]
                cut += 1
        return cut

    def drop_through(self, offset: int) -> array[int]:
        """Remove every record with an offset <= ``offset``; return their offsets."""
        k = bisect_right(self.offsets, offset)
        dropped = self.offsets[:k]
        dedup = self.dedup
        for msg_id, off in zip(self.ids[:k], dropped, strict=True):
            if dedup.get(msg_id) == off:
                del dedup[msg_id]
        self.bytes -= sum(self.sizes[:k])
        del self.offsets[:k], self.positions[:k], self.ts[:k], self.sizes[:k], self.ids[:k]
        self.trimmed_through = max(self.trimmed_through, offset)
        self.head = max(self.head, offset)
        return dropped
