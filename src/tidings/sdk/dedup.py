"""Ids already handled, remembered for a while in bounded memory."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class SeenIds:
    """A set of keys that forgets each one ``ttl`` seconds after it was added,
    and the oldest ones first when it holds ``max_entries``."""

    def __init__(
        self, ttl: float = 600.0, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: str) -> bool:
        self._expire()
        return key in self._seen

    def add(self, key: str) -> None:
        self._seen[key] = self._clock() + self.ttl
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        seen = self._seen
        while seen:
            key, until = next(iter(seen.items()))
            if until > now:
                return
            del seen[key]
